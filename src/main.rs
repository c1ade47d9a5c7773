//! The `palisade` binary: everything is in the library; see `cli.rs`.
fn main() -> std::process::ExitCode {
    palisade::cli::main()
}

/// mimalloc returns freed pages to the OS promptly (glibc keeps them), so memory freed when
/// connections go idle or close shows up as lower RSS, and it is fast for our many small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
