//! The `pgdr` binary: parse the command line, run the command, map the outcome to an
//! exit code. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    pgdr::cli::main()
}
