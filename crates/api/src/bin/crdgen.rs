//! Writes the CRDs generated from the API types into a directory (`deploy/crds/`).

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "deploy/crds".into());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: {dir}: {e}");
        std::process::exit(1);
    }
    for crd in api::crd::all() {
        let path = std::path::Path::new(&dir).join(api::crd::file_name(&crd));
        if let Err(e) = std::fs::write(&path, api::crd::to_yaml(&crd)) {
            eprintln!("crdgen: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
