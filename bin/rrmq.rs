//! `rrmq`: the command-line client and local cluster launcher. Thin on purpose: everything
//! lives in `rrmq::cli`.

fn main() -> std::process::ExitCode {
    rrmq::cli::main()
}
