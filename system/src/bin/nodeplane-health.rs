//! The health check server of `externalTrafficPolicy: Local` Services; see [`nodeplane::health`].

fn main() -> std::process::ExitCode {
    nodeplane::health::main()
}
