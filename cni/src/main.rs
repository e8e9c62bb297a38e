//! `skiff-cni`: the CNI plugin. Built by the overlay/CNI issue; until then it answers
//! every command with a CNI error object so that a runtime sees a clear failure.

fn main() {
    println!(
        r#"{{"cniVersion":"1.0.0","code":999,"msg":"skiff-cni is not built yet","details":"see the overlay/CNI issue"}}"#
    );
    std::process::exit(1);
}
