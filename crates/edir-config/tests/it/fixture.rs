//! A copy of the repository's `pipelines/` and `prompts/` in a temporary folder, edited per test.

use std::path::{Path, PathBuf};

use edir_config::Compiled;

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// The shipped pipeline, taxonomy and prompts, with an (empty) source folder.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for folder in ["pipelines", "prompts"] {
            copy_dir(&repo_root().join(folder), &dir.path().join(folder));
        }
        std::fs::create_dir_all(dir.path().join("data/reference")).unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Replaces the single occurrence of `from` in `file`.
    pub(crate) fn edit(&self, file: &str, from: &str, to: &str) -> &Self {
        let path = self.path(file);
        let text = fs_err::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` must occur once in {file}"
        );
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        self
    }

    pub(crate) fn write(&self, file: &str, text: &str) -> &Self {
        std::fs::write(self.path(file), text).unwrap();
        self
    }

    pub(crate) fn remove(&self, file: &str) -> &Self {
        std::fs::remove_file(self.path(file)).unwrap();
        self
    }

    pub(crate) fn compile(&self) -> Compiled {
        edir_config::compile_file(&self.path("pipelines/full.yaml"))
    }

    /// The rendered diagnostics, with the temporary folder shown as `<tmp>`.
    pub(crate) fn check(&self) -> String {
        let compiled = self.compile();
        let root = self.dir.path().display().to_string();
        compiled.render().replace(&root, "<tmp>")
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
