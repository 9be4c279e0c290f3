//! Compiles a pipeline and prints its diagnostics (a debugging aid; `edir-synth check` is the tool).
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pipelines/full.yaml".into());
    let compiled = edir_config::compile_file(std::path::Path::new(&path));
    eprint!("{}", compiled.render());
    if let Some(p) = compiled.pipeline {
        eprintln!("ok: {} stages, hash {}", p.stages.len(), &p.hash[..12]);
    }
}
