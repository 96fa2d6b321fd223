//! Manifests on disk: a file or a directory of `*.yaml`/`*.yml`/`*.json`.
//! Re-read on change (polling: works on every filesystem and for editors
//! that replace files). Good objects replace their old versions; a broken
//! object or file leaves the last good version of what it held in place.
//! Only files that changed are parsed again (in parallel), and the one
//! object store is updated in place, so an edit costs what it touches.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::source::manifest::{self, Document, ManifestError, Parsed};
use crate::store::{ObjectId, ObjectStore};

pub struct FileSource {
    root: PathBuf,
    /// Fingerprint of what was last read: path -> (mtime, len).
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    /// Ids of the objects each file holds (their last good versions).
    held: BTreeMap<PathBuf, BTreeSet<ObjectId>>,
    /// Every file's objects, one copy.
    store: ObjectStore,
    /// Each file's documents by text hash, with what they yielded: a
    /// document whose text is unchanged is not parsed again.
    docs: BTreeMap<PathBuf, HashMap<u64, Outcome>>,
}

/// What one document contributed: the ids it holds in the store, and the
/// problems it had (reported again on every read of its file).
#[derive(Clone, Debug, Default)]
struct Outcome {
    ids: Vec<ObjectId>,
    errors: Vec<ManifestError>,
}

/// What one reload found wrong; the objects are in [`FileSource::store`].
pub struct Reload {
    pub errors: Vec<ManifestError>,
}

impl FileSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            seen: BTreeMap::new(),
            held: BTreeMap::new(),
            store: ObjectStore::default(),
            docs: BTreeMap::new(),
        }
    }

    /// The objects of the last load.
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// The Services whose objects changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<crate::store::NsName> {
        self.store.take_dirty()
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

    /// Re-reads the files that changed since the last load and updates
    /// the store: new and changed objects in, vanished ones out, invalid
    /// ones kept at their last good version.
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
        let present: BTreeSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .held
            .keys()
            .filter(|f| !present.contains(f))
            .cloned()
            .collect();
        for file in gone {
            self.docs.remove(&file);
            let ids = self.held.remove(&file).unwrap_or_default();
            self.drop_objects(&ids);
        }
        let changed: Vec<PathBuf> = files
            .into_iter()
            .filter(|f| !(before.contains_key(f) && before.get(f) == self.seen.get(f)))
            .collect();
        let mut errors = Vec::new();
        let jobs: Vec<(PathBuf, HashSet<u64>)> = changed
            .iter()
            .map(|f| {
                let known = self.docs.get(f).map(|d| d.keys().copied().collect());
                (f.clone(), known.unwrap_or_default())
            })
            .collect();
        for ((file, _), contents) in jobs.iter().zip(parse_all(&jobs)) {
            let old = self.held.remove(file).unwrap_or_default();
            let known = self.docs.remove(file).unwrap_or_default();
            let docs = match contents {
                Ok(docs) => docs,
                Err(e) => {
                    // The file is unreadable as a whole: keep all it held.
                    errors.push(e);
                    self.held.insert(file.clone(), old);
                    self.docs.insert(file.clone(), known);
                    continue;
                }
            };
            let mut ids = BTreeSet::new();
            let mut next = HashMap::new();
            for doc in docs {
                let outcome = match doc.parsed {
                    Some(parsed) => self.apply(parsed, &old),
                    None => known.get(&doc.hash).cloned().unwrap_or_default(),
                };
                ids.extend(outcome.ids.iter().cloned());
                errors.extend(outcome.errors.iter().cloned().map(|mut e| {
                    e.document = doc.number;
                    e
                }));
                next.insert(doc.hash, outcome);
            }
            let vanished: BTreeSet<ObjectId> = old.difference(&ids).cloned().collect();
            self.held.insert(file.clone(), ids);
            self.docs.insert(file.clone(), next);
            self.drop_objects(&vanished);
        }
        Ok(Reload { errors })
    }

    /// Puts one freshly parsed document's objects into the store. An
    /// invalid object keeps its last good version (if this file had one).
    fn apply(&mut self, parsed: Vec<Parsed>, old: &BTreeSet<ObjectId>) -> Outcome {
        let mut out = Outcome::default();
        for p in parsed {
            match p.result {
                Ok(entry) => {
                    // Unchanged objects stay as they are: their Services
                    // stay clean.
                    let id = entry.id();
                    if !self.store.holds(&entry) {
                        self.store.upsert(entry);
                    }
                    out.ids.push(id);
                }
                Err(e) => {
                    if let Some(id) = p.id.filter(|id| old.contains(id)) {
                        out.ids.push(id);
                    }
                    out.errors.push(e);
                }
            }
        }
        out
    }

    /// Removes objects no file holds any more (one may still be defined
    /// in another file, which then keeps it).
    fn drop_objects(&mut self, ids: &BTreeSet<ObjectId>) {
        for id in ids {
            if !self.held.values().any(|h| h.contains(id)) {
                self.store.remove(id);
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Reads files on all cores (parsing only documents not in their known
/// set), results in the order of `jobs`.
fn parse_all(jobs: &[(PathBuf, HashSet<u64>)]) -> Vec<Result<Vec<Document>, ManifestError>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len());
    let read =
        |(f, known): &(PathBuf, HashSet<u64>)| manifest::read_file(f, &|h| known.contains(&h));
    if threads <= 1 {
        return jobs.iter().map(read).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(read).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("manifest parser thread"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, NsName};

    fn svc(name: &str, port: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: {port}}}]}}\n---\n"
        )
    }

    fn id(name: &str) -> ObjectId {
        ObjectId {
            kind: Kind::Service,
            key: NsName {
                namespace: "default".into(),
                name: name.into(),
            },
        }
    }

    fn port(src: &FileSource, name: &str) -> Option<i32> {
        let s = src.store().services.get(&id(name).key)?;
        Some(i32::from(s.ports.first()?.port))
    }

    /// Rewrites a file with a different length, so the change is seen
    /// even within one mtime tick.
    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn edits_removals_and_bad_versions() {
        let dir = std::env::temp_dir().join(format!("ferrolb-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.yaml"), dir.join("b.yaml"));
        write(&a, &(svc("one", 80) + &svc("two", 81)));
        write(&b, &svc("three", 82));
        let mut src = FileSource::new(&dir);
        assert!(src.load().unwrap().errors.is_empty());
        assert_eq!(src.store().len(), 3);
        assert!(!src.changed());

        // "two" leaves a.yaml, "one" turns invalid: its last good version stays.
        write(&a, &svc("one", 70000));
        assert!(src.changed());
        let r = src.load().unwrap();
        assert_eq!(
            r.errors.len(),
            1,
            "{:?}",
            r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(port(&src, "one"), Some(80));
        assert_eq!(port(&src, "two"), None);
        assert_eq!(port(&src, "three"), Some(82));

        // A broken file keeps everything it held; fixing it applies the fix.
        write(&a, "kind: [");
        assert_eq!(src.load().unwrap().errors.len(), 1);
        assert_eq!(port(&src, "one"), Some(80));
        write(&a, &svc("one", 8080));
        assert!(src.load().unwrap().errors.is_empty());
        assert_eq!(port(&src, "one"), Some(8080));

        // Removing a file removes its objects.
        std::fs::remove_file(&b).unwrap();
        src.load().unwrap();
        assert_eq!(port(&src, "three"), None);
        assert_eq!(src.store().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
