//! Writes MetalLB's CRDs, generated from the adapter's types, to `deploy/crds/metallb.io.yaml`
//! (or to standard output with `-`).

fn main() {
    let yaml = ferrolb_k8s_adapter::crd::all_yaml();
    let target = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crds/metallb.io.yaml"
        )
        .to_string()
    });
    if target == "-" {
        print!("{yaml}");
        return;
    }
    if let Err(e) = std::fs::write(&target, yaml) {
        eprintln!("ferrolb-crdgen: {target}: {e}");
        std::process::exit(1);
    }
    eprintln!("wrote {target}");
}
