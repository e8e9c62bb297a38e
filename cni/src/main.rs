//! `skiff-cni`: the CNI plugin binary. All logic is in the library (`skiff_cni`).

fn main() -> std::process::ExitCode {
    skiff_cni::plugin::main()
}
