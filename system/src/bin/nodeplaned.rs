//! The nodeplane node supervisor; see [`nodeplane::daemon`].

fn main() -> std::process::ExitCode {
    nodeplane::daemon::main()
}
