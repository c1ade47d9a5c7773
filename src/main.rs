//! The `palisade` binary: everything is in the library; see `cli.rs`.
fn main() -> std::process::ExitCode {
    palisade::cli::main()
}
