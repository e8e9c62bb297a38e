//! `skiff-control`: the control plane. Built by the control-plane issue; this binary
//! only says so until then.

fn main() {
    eprintln!("skiff-control: the control plane is not built yet (see the control-plane issue)");
    std::process::exit(2);
}
