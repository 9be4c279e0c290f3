#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod chat;
pub mod codec;
pub mod config;
pub mod edit;
pub mod embed;
pub mod generic;
pub mod phrase;
pub mod propose;
pub mod render;
pub mod rng;
pub mod scene;
mod server;

pub use config::{Capacity, Faults, ModelConfig, Role, SimConfig};
pub use server::{SimServer, router};

/// Writes `count` reference scenes as PNG files `scene_00000.png`, ... into `dir`, with sizes
/// drawn from `sizes` (pixels, square or 4:3), deterministic given `seed`.
///
/// # Errors
/// I/O errors, naming the file.
pub fn write_scenes(
    dir: &std::path::Path,
    count: usize,
    seed: u64,
    sizes: &[u32],
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rng::Rng::new(seed);
    let mut paths = Vec::with_capacity(count);
    for index in 0..count {
        let side = *rng.pick(if sizes.is_empty() { &[256] } else { sizes });
        let (width, height) = if rng.chance(0.5) {
            (side, side)
        } else {
            (side, side * 3 / 4)
        };
        let scene = scene::Scene::random(&mut rng, width, height);
        let pixels = render::render(&scene);
        let png = codec::encode_png(&pixels, Some(&scene)).map_err(std::io::Error::other)?;
        let path = dir.join(format!("scene_{index:05}.png"));
        std::fs::write(&path, png)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        paths.push(path);
    }
    Ok(paths)
}
