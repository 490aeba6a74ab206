//! The `mandate` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    mandate::cli::main()
}
