//! The nodeplane CNI plugin; see [`nodeplane::cni`].

fn main() -> std::process::ExitCode {
    nodeplane::cni::main()
}
