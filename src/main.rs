//! The `palisade` binary: everything is in the library; see `cli.rs`.
fn main() -> std::process::ExitCode {
    // No transparent huge pages: one touched byte would pin 2 MiB, which defeats freeing the
    // memory of idle connections (mimalloc's own THP advice is compiled out with `no_thp`; this
    // also covers hosts where THP is "always").
    let _ = nix::sys::prctl::set_thp_disable(true);
    palisade::cli::main()
}

/// mimalloc returns freed pages to the OS promptly (glibc keeps them), so memory freed when
/// connections go idle or close shows up as lower RSS, and it is fast for our many small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
