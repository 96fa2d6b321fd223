//! Manifests on disk: a file or a directory of `*.yaml`/`*.yml`/`*.json`.
//! Re-read on change (polling: works on every filesystem and for editors
//! that replace files). Good objects replace their old versions; a broken
//! object or file leaves the last good version of what it held in place.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::source::manifest::{self, ManifestError};
use crate::store::{Object, ObjectId, ObjectStore};

pub struct FileSource {
    root: PathBuf,
    /// Fingerprint of what was last read: path -> (mtime, len).
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    /// Last good objects, by the file that holds them.
    good: BTreeMap<PathBuf, BTreeMap<ObjectId, Object>>,
}

/// The result of one reload.
pub struct Reload {
    pub store: ObjectStore,
    pub errors: Vec<ManifestError>,
}

impl FileSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            seen: BTreeMap::new(),
            good: BTreeMap::new(),
        }
    }

    fn list(&self) -> std::io::Result<Vec<PathBuf>> {
        if self.root.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.root)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            Ok(files)
        } else {
            std::fs::metadata(&self.root)?;
            Ok(vec![self.root.clone()])
        }
    }

    fn fingerprint(&self) -> std::io::Result<BTreeMap<PathBuf, (SystemTime, u64)>> {
        let mut out = BTreeMap::new();
        for p in self.list()? {
            if let Ok(m) = std::fs::metadata(&p) {
                out.insert(p, (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            }
        }
        Ok(out)
    }

    /// True when files were added, removed or changed since the last load.
    pub fn changed(&self) -> bool {
        match self.fingerprint() {
            Ok(f) => f != self.seen,
            Err(_) => true,
        }
    }

    /// Re-reads every file and returns the resulting store.
    pub fn load(&mut self) -> Result<Reload, ManifestError> {
        let files = self.list().map_err(|e| ManifestError {
            file: self.root.clone(),
            document: 0,
            object: "path".into(),
            field: String::new(),
            message: format!("cannot read manifests: {e}"),
        })?;
        let before = std::mem::take(&mut self.seen);
        self.seen = self.fingerprint().unwrap_or_default();
        let mut errors = Vec::new();
        let mut good = BTreeMap::new();
        for file in files {
            let previous = self.good.remove(&file).unwrap_or_default();
            let unchanged = before.contains_key(&file) && before.get(&file) == self.seen.get(&file);
            if unchanged {
                // Only changed files are parsed again: one edit costs one file.
                good.insert(file, previous);
                continue;
            }
            let objects = match manifest::parse_file(&file) {
                Ok(docs) => merge_documents(docs, &previous, &mut errors),
                Err(e) => {
                    // The file is unreadable as a whole: keep all it held.
                    errors.push(e);
                    previous
                }
            };
            good.insert(file, objects);
        }
        self.good = good;
        let mut store = ObjectStore::default();
        for objects in self.good.values() {
            for obj in objects.values() {
                // Already validated when parsed.
                let _ = store.upsert(obj.clone());
            }
        }
        Ok(Reload { store, errors })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// New objects of one file, with the previous version kept for each
/// named object that is now invalid.
fn merge_documents(
    docs: Vec<manifest::Parsed>,
    previous: &BTreeMap<ObjectId, Object>,
    errors: &mut Vec<ManifestError>,
) -> BTreeMap<ObjectId, Object> {
    let mut out = BTreeMap::new();
    for doc in docs {
        match doc.result {
            Ok(obj) => {
                out.insert(obj.id(), obj);
            }
            Err(e) => {
                if let Some(old) = doc.id.as_ref().and_then(|id| previous.get(id)) {
                    out.insert(doc.id.clone().unwrap_or_else(|| old.id()), old.clone());
                }
                errors.push(e);
            }
        }
    }
    out
}
