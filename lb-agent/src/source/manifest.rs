//! Parsing YAML/JSON manifests (multi-document, `kind: List` too) into
//! typed k8s-openapi objects, validated and kept as store entries. Errors
//! name the file, the document, the object and the field.
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::entry::Entry;
use crate::store::{Kind, NsName, Object, ObjectId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
    /// "Service default/hostnames", or "document" when it could not be named.
    pub object: String,
    /// Field path, e.g. `spec.ports[0].port`; empty for whole-document errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {}: {}",
            self.file.display(),
            self.document,
            self.object
        )?;
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// One document's outcome. `id` is known whenever the document could be
/// named, even if its contents are invalid: that lets the caller keep the
/// last good version of exactly that object.
#[derive(Debug)]
pub struct Parsed {
    pub id: Option<ObjectId>,
    pub result: Result<Entry, ManifestError>,
}

/// What one file holds. `Err` when the file as a whole cannot be read or
/// is not YAML; then none of its documents can be trusted.
pub type FileContents = Result<Vec<Parsed>, ManifestError>;

/// One document of a file read with [`read_file`].
#[derive(Debug)]
pub struct Document {
    /// 1-based position in the file.
    pub number: usize,
    /// Hash of the document's text.
    pub hash: u64,
    /// Its objects, or `None` when the caller already knew this text.
    pub parsed: Option<Vec<Parsed>>,
}

/// Reads and splits `path`, parsing only documents whose text hash is not
/// in `known`: an edit to one object of a large file parses that one.
/// `Err` when the file cannot be read or a document is not YAML.
pub fn read_file(path: &Path, known: &dyn Fn(u64) -> bool) -> Result<Vec<Document>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: path.to_path_buf(),
        document: 0,
        object: "file".into(),
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    read_str(path, &text, known)
}

fn read_str(
    path: &Path,
    text: &str,
    known: &dyn Fn(u64) -> bool,
) -> Result<Vec<Document>, ManifestError> {
    split_documents(text)
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let number = i + 1;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            doc.hash(&mut h);
            let hash = h.finish();
            let parsed = if known(hash) {
                None
            } else {
                Some(parse_document(path, number, doc)?)
            };
            Ok(Document {
                number,
                hash,
                parsed,
            })
        })
        .collect()
}

pub fn parse_str(path: &Path, text: &str) -> FileContents {
    Ok(read_str(path, text, &|_| false)?
        .into_iter()
        .flat_map(|d| d.parsed.unwrap_or_default())
        .collect())
}

fn parse_document(path: &Path, document: usize, text: &str) -> Result<Vec<Parsed>, ManifestError> {
    if let Some(parsed) = parse_direct(text) {
        return Ok(vec![parsed]);
    }
    let value: Value = serde_yaml::from_str(text).map_err(|e| ManifestError {
        file: path.to_path_buf(),
        document,
        object: "document".into(),
        field: String::new(),
        message: format!("not valid YAML: {e}"),
    })?;
    let mut out = Vec::new();
    if !value.is_null() {
        parse_value(path, document, value, &mut out);
    }
    Ok(out)
}

/// The fast path for the common document: one object whose top-level
/// `kind` and `apiVersion` can be read off its lines, deserialized
/// straight into its type (building a `Value` first costs about as much
/// as the deserializing). `None` sends the document down the general
/// path, which also names the failing field: a misread kind cannot get
/// through, as k8s-openapi checks `kind` and `apiVersion` itself.
fn parse_direct(text: &str) -> Option<Parsed> {
    let (mut kind, mut api) = (None, None);
    for line in text.lines() {
        let (slot, value) = if let Some(v) = line.strip_prefix("kind:") {
            (&mut kind, v)
        } else if let Some(v) = line.strip_prefix("apiVersion:") {
            (&mut api, v)
        } else {
            continue;
        };
        if slot.replace(value.trim()).is_some() {
            return None;
        }
    }
    let obj = match (kind?, api?) {
        ("Service", "v1") => Object::Service(serde_yaml::from_str(text).ok()?),
        ("Endpoints", "v1") => Object::Endpoints(serde_yaml::from_str(text).ok()?),
        ("EndpointSlice", "discovery.k8s.io/v1") => {
            Object::EndpointSlice(serde_yaml::from_str(text).ok()?)
        }
        _ => return None,
    };
    let entry = Entry::from_object(&obj).ok()?;
    Some(Parsed {
        id: Some(entry.id()),
        result: Ok(entry),
    })
}

/// Splits a YAML stream at its `---` document markers (a marker line
/// cannot occur inside a document). Text before the first marker is a
/// document only if it holds more than blanks and comments.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let (mut start, mut pos) = (0, 0);
    for line in text.split_inclusive('\n') {
        let t = line.trim_end_matches(['\n', '\r']);
        if t == "---" || t.starts_with("--- ") || t.starts_with("---\t") {
            docs.push(&text[start..pos]);
            // Content may follow the marker on its line ("--- {a: 1}").
            start = pos + 3.min(line.len());
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    let blank = |d: &str| {
        d.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    };
    if docs.len() > 1 && blank(docs[0]) {
        docs.remove(0);
    }
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn parse_value(path: &Path, document: usize, value: Value, out: &mut Vec<Parsed>) {
    let fail = |object: String, field: &str, message: String| ManifestError {
        file: path.to_path_buf(),
        document,
        object,
        field: field.to_string(),
        message,
    };
    let kind_str = str_at(&value, &["kind"]).map(str::to_string);
    let api = str_at(&value, &["apiVersion"]).unwrap_or("").to_string();
    let name = str_at(&value, &["metadata", "name"])
        .unwrap_or("")
        .to_string();
    let namespace = str_at(&value, &["metadata", "namespace"])
        .unwrap_or("default")
        .to_string();
    let Some(kind_str) = kind_str else {
        out.push(Parsed {
            id: None,
            result: Err(fail("document".into(), "kind", "is missing".into())),
        });
        return;
    };
    if kind_str == "List" {
        if let Some(Value::Sequence(items)) = value.get("items").cloned() {
            for item in items {
                parse_value(path, document, item, out);
            }
        }
        return;
    }
    let kind = match (kind_str.as_str(), api.as_str()) {
        ("Service", "v1") => Kind::Service,
        ("Endpoints", "v1") => Kind::Endpoints,
        ("EndpointSlice", "discovery.k8s.io/v1") => Kind::EndpointSlice,
        (k @ ("Service" | "Endpoints" | "EndpointSlice"), a) => {
            out.push(Parsed {
                id: None,
                result: Err(fail(
                    format!("{k} {namespace}/{name}"),
                    "apiVersion",
                    format!("unsupported apiVersion {a:?} for {k}"),
                )),
            });
            return;
        }
        (k, _) => {
            out.push(Parsed {
                id: None,
                result: Err(fail(
                    format!("{k} {namespace}/{name}"),
                    "kind",
                    format!("unknown kind {k:?} (expected Service, EndpointSlice or Endpoints)"),
                )),
            });
            return;
        }
    };
    let id = ObjectId {
        kind,
        key: NsName {
            namespace,
            name: name.clone(),
        },
    };
    let object_name = id.to_string();
    let result = match kind {
        Kind::Service => typed(value).map(Object::Service),
        Kind::Endpoints => typed(value).map(Object::Endpoints),
        Kind::EndpointSlice => typed(value).map(Object::EndpointSlice),
    }
    .map_err(|(field, message)| fail(object_name.clone(), &field, message))
    .and_then(|obj| {
        // Only what the agent needs is kept of the object, from here on.
        Entry::from_object(&obj).map_err(|e| fail(object_name.clone(), &e.field, e.message))
    });
    out.push(Parsed {
        id: if name.is_empty() { None } else { Some(id) },
        result,
    });
}

/// Deserializes with the failing field's path kept for the error. The
/// path is tracked only on a second pass after a failure: tracking it
/// costs an allocation per key, most of the parse for valid documents.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    if let Ok(t) = T::deserialize(&value) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Parsed> {
        parse_str(Path::new("t.yaml"), text).expect("yaml")
    }

    #[test]
    fn documents_split_like_the_yaml_stream_and_known_ones_are_skipped() {
        let svc = |n: &str, port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec: {{ports: [{{port: {port}}}]}}\n"
            )
        };
        let text = format!(
            "# leading comment\n---\n{}---\n# empty document\n--- \n{}---\n{}",
            svc("a", "80"),
            svc("b", "81"),
            svc("c", "x")
        );
        // Document numbers as a YAML stream counts them (the empty one too).
        assert_eq!(serde_yaml::Deserializer::from_str(&text).count(), 4);
        let path = Path::new("t.yaml");
        let first = read_str(path, &text, &|_| false).unwrap();
        assert_eq!(first.len(), 4);
        let err = first[3].parsed.as_ref().unwrap()[0]
            .result
            .as_ref()
            .unwrap_err();
        assert_eq!(
            (err.document, err.field.as_str()),
            (4, "spec.ports[0].port")
        );
        // Change b only: every other document is known and not parsed.
        let known: std::collections::HashSet<u64> = first.iter().map(|d| d.hash).collect();
        let edited = text.replace("port: 81", "port: 82");
        let second = read_str(path, &edited, &|h| known.contains(&h)).unwrap();
        let fresh: Vec<usize> = second
            .iter()
            .filter(|d| d.parsed.is_some())
            .map(|d| d.number)
            .collect();
        assert_eq!(fresh, vec![3]);
    }

    #[test]
    fn direct_path_takes_only_documents_it_can_read() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n";
        assert!(parse_direct(svc).is_some());
        // k8s-openapi checks kind itself: a misread one is not taken.
        let wrong = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
        assert!(serde_yaml::from_str::<k8s_openapi::api::core::v1::Endpoints>(wrong).is_err());
        // Flow style, quoted keys, invalid objects: general path.
        for text in [
            "{apiVersion: v1, kind: Service, metadata: {name: a}}",
            "apiVersion: v1\nkind: \"Service\"\nmetadata: {name: a}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}\n",
        ] {
            assert!(parse_direct(text).is_none(), "{text}");
            assert_eq!(parse(text).len(), 1, "{text}");
        }
        // A repeated key too (there it is not YAML at all).
        let twice = "apiVersion: v1\nkind: Service\nkind: Service\nmetadata: {name: a}\n";
        assert!(parse_direct(twice).is_none());
        assert!(parse_str(Path::new("t.yaml"), twice).is_err());
    }

    #[test]
    fn seeds_hostnames_service_parses() {
        let docs = parse(include_str!("../../../manifests/hostnames.yaml"));
        assert_eq!(docs.len(), 2);
        assert!(docs.iter().all(|d| d.result.is_ok()));
        assert_eq!(
            docs[0].id.as_ref().unwrap().to_string(),
            "Service default/hostnames"
        );
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let docs = parse(
            r#"
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: web}
spec:
  clusterIP: 10.0.0.9
  ports: [{port: 70000, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-ip}
spec:
  clusterIP: 10.0.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: v1
kind: Service
metadata: {name: bad-type}
spec:
  ports: [{port: "eighty"}]
"#,
        );
        let msgs: Vec<String> = docs
            .iter()
            .map(|d| d.result.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            msgs[0].contains("t.yaml: document 1: Service web/bad-port: field spec.ports[0].port: port 70000 is out of range"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("Service default/bad-ip: field spec.clusterIP"),
            "{}",
            msgs[1]
        );
        assert!(msgs[1].contains("10.0.0.300"), "{}", msgs[1]);
        assert!(
            msgs[2].contains("ConfigMap default/cm: field kind: unknown kind"),
            "{}",
            msgs[2]
        );
        assert!(msgs[3].contains("field spec.ports[0].port"), "{}", msgs[3]);
        // The named ones can be matched to their last good version.
        assert!(docs[0].id.is_some() && docs[1].id.is_some());
    }

    #[test]
    fn broken_yaml_fails_the_whole_file() {
        let err = parse_str(Path::new("x.yaml"), "kind: Service\n  bad: [indent").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.yaml: document 1: document: not valid YAML")
        );
    }

    #[test]
    fn list_items_are_objects() {
        let docs = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
        );
        assert_eq!(docs.len(), 1);
        assert!(docs[0].result.is_ok());
    }
}

/// Random mutations of valid manifests never panic the parser, the store,
/// the model or the reconciler, and good objects keep parsing.
#[cfg(test)]
mod fuzz {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{model, reconcile::Reconciler, store::ObjectStore};

    const SEED_MANIFESTS: &str = concat!(
        include_str!("../../../manifests/hostnames.yaml"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: mydb}\nspec:\n  clusterIP: 10.98.213.29\n  ports: [{port: 3306, targetPort: 3306}]\n",
        "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: mydb}\nsubsets:\n- addresses: [{ip: 192.168.0.5}]\n  ports: [{port: 3306}]\n",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: multi}\nspec:\n  clusterIP: 10.0.2.30\n  ports:\n  - {name: http, port: 80, targetPort: web}\n  - {name: dns, port: 53, protocol: UDP}\n",
    );

    fn mutate(r: &mut fastrand::Rng, text: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for _ in 0..r.usize(1..4) {
            if lines.is_empty() {
                break;
            }
            let i = r.usize(..lines.len());
            match r.u8(0..7) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                2 => {
                    let mut b = lines[i].clone().into_bytes();
                    if !b.is_empty() {
                        let j = r.usize(..b.len());
                        b[j] = r.u8(32..127);
                    }
                    lines[i] = String::from_utf8_lossy(&b).into_owned();
                }
                3 => {
                    let junk = [
                        "- x",
                        "  : :",
                        "port: -1",
                        "port: 99999999999",
                        "{",
                        "]",
                        "ready: maybe",
                        "  - addresses: [\"::1\"]",
                        "protocol: ICMP",
                        "clusterIP: \"\"",
                        "---",
                        "kind: List\nitems: [1, 2]",
                    ];
                    lines.insert(i, junk[r.usize(..junk.len())].to_string());
                }
                4 => lines[i] = lines[i].replace("10.", "300."),
                5 => lines[i] = lines[i].replace(": ", ": [").replace("80", "\"80\""),
                _ => lines[i] = format!("  {}", lines[i]),
            }
        }
        lines.join("\n")
    }

    #[test]
    fn mutated_manifests_never_panic() {
        let mut r = fastrand::Rng::with_seed(fastrand::u64(..));
        let mut store = ObjectStore::default();
        let mut cache = model::ModelCache::default();
        let mut rec = Reconciler::default();
        let mut parsed_ok = 0;
        for _ in 0..5000 {
            let text = mutate(&mut r, SEED_MANIFESTS);
            let Ok(docs) = parse_str(Path::new("fuzz.yaml"), &text) else {
                continue;
            };
            for d in docs {
                if let Ok(obj) = d.result {
                    parsed_ok += 1;
                    store.upsert(obj);
                }
            }
            let dirty: BTreeSet<_> = store.take_dirty();
            let up = cache.update(&store, &dirty);
            let ops = rec.plan(cache.desired(), up.changed);
            for op in &ops {
                crate::reconcile::apply_to(rec.mirror_mut(), op);
            }
        }
        assert!(
            parsed_ok > 1000,
            "mutations left enough good objects: {parsed_ok}"
        );
    }
}
