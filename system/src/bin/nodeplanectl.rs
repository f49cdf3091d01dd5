//! The nodeplane command-line client; see [`nodeplane::ctl`].

fn main() -> std::process::ExitCode {
    nodeplane::ctl::main()
}
