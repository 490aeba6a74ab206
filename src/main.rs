//! The `mandate` binary: parse the command line and run it.

/// mimalloc instead of the system allocator: every call allocates, and glibc's malloc showed as
/// ~12% of Mandate's CPU per call under load (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mandate::cli::main()
}
