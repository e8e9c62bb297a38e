//! `skiff-node`: the node agent binary; everything lives in the library.

fn main() -> anyhow::Result<()> {
    skiff_node::agent::main()
}
