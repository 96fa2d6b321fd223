//! The Kubernetes objects the agent knows, as any source delivered them.
//! Every object is validated on the way in and kept as an [`Entry`] (the
//! fields the agent reads); an invalid object never replaces a valid one,
//! so what is programmed is never lost to bad input.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::entry::{Body, EndpointsEntry, Entry, ServiceEntry, SliceEntry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
        })
    }
}

/// namespace/name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for NsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: Kind,
    pub key: NsName,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// An object as a source delivers it (a manifest document, an API event);
/// the store keeps its [`Entry`].
// Objects are moved rarely and in small numbers; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Endpoints(Endpoints),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
        }
    }

    pub fn id(&self) -> ObjectId {
        let meta = self.meta();
        ObjectId {
            kind: self.kind(),
            key: NsName {
                namespace: meta
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_string()),
                name: meta.name.clone().unwrap_or_default(),
            },
        }
    }
}

/// The Service an EndpointSlice belongs to, from its service-name label.
fn slice_service(key: &NsName, slice: &SliceEntry) -> Option<NsName> {
    Some(NsName {
        namespace: key.namespace.clone(),
        name: slice.service.clone()?,
    })
}

/// All objects, by kind and namespace/name, as [`Entry`]s (what the agent
/// needs of them). Change them only through `upsert` and `remove`: those
/// keep the slice index and the set of Services whose frontends need
/// recomputing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectStore {
    pub services: BTreeMap<NsName, ServiceEntry>,
    pub slices: BTreeMap<NsName, SliceEntry>,
    pub endpoints: BTreeMap<NsName, EndpointsEntry>,
    /// Service -> the EndpointSlices that name it.
    slices_of: BTreeMap<NsName, BTreeSet<NsName>>,
    /// Services touched since the last `take_dirty`.
    dirty: BTreeSet<NsName>,
}

impl ObjectStore {
    /// Stores a validated `entry`, replacing any object with the same id.
    pub fn upsert(&mut self, entry: Entry) {
        // The old version's Service is affected too (a slice may move).
        self.remove(&entry.id());
        let key = entry.key;
        match entry.body {
            Body::Service(o) => {
                self.dirty.insert(key.clone());
                self.services.insert(key, o);
            }
            Body::EndpointSlice(o) => {
                if let Some(svc) = slice_service(&key, &o) {
                    self.dirty.insert(svc.clone());
                    self.slices_of.entry(svc).or_default().insert(key.clone());
                }
                self.slices.insert(key, o);
            }
            Body::Endpoints(o) => {
                self.dirty.insert(key.clone());
                self.endpoints.insert(key, o);
            }
        }
    }
    pub fn remove(&mut self, id: &ObjectId) {
        match id.kind {
            Kind::Service => {
                if self.services.remove(&id.key).is_some() {
                    self.dirty.insert(id.key.clone());
                }
            }
            Kind::EndpointSlice => {
                if let Some(old) = self.slices.remove(&id.key)
                    && let Some(svc) = slice_service(&id.key, &old)
                {
                    if let Some(set) = self.slices_of.get_mut(&svc) {
                        set.remove(&id.key);
                        if set.is_empty() {
                            self.slices_of.remove(&svc);
                        }
                    }
                    self.dirty.insert(svc);
                }
            }
            Kind::Endpoints => {
                if self.endpoints.remove(&id.key).is_some() {
                    self.dirty.insert(id.key.clone());
                }
            }
        }
    }

    /// True when the store holds `obj` exactly as given: an unchanged
    /// object re-delivered (a relist) need not touch anything.
    /// Fields the agent does not keep do not count: changing only those
    /// changes nothing programmed.
    pub fn holds(&self, entry: &Entry) -> bool {
        let key = &entry.key;
        match &entry.body {
            Body::Service(o) => self.services.get(key) == Some(o),
            Body::EndpointSlice(o) => self.slices.get(key) == Some(o),
            Body::Endpoints(o) => self.endpoints.get(key) == Some(o),
        }
    }

    /// The ids of every stored object of `kind`.
    pub fn ids(&self, kind: Kind) -> Vec<ObjectId> {
        let keys: Vec<&NsName> = match kind {
            Kind::Service => self.services.keys().collect(),
            Kind::EndpointSlice => self.slices.keys().collect(),
            Kind::Endpoints => self.endpoints.keys().collect(),
        };
        keys.into_iter()
            .map(|key| ObjectId {
                kind,
                key: key.clone(),
            })
            .collect()
    }

    /// True when some Service changed since the last `take_dirty`.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The EndpointSlices of Service `svc`.
    pub fn slices_of<'a>(&'a self, svc: &NsName) -> impl Iterator<Item = &'a SliceEntry> + 'a {
        self.slices_of
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// EndpointSlices that name no stored Service (or none at all), with
    /// the Service they name: nothing of them is programmed.
    pub fn orphan_slices(&self) -> Vec<(NsName, Option<NsName>)> {
        let mut out: Vec<(NsName, Option<NsName>)> = self
            .slices_of
            .iter()
            .filter(|(svc, _)| !self.services.contains_key(svc))
            .flat_map(|(svc, slices)| slices.iter().map(|s| (s.clone(), Some(svc.clone()))))
            .collect();
        out.extend(
            self.slices
                .iter()
                .filter(|(k, s)| slice_service(k, s).is_none())
                .map(|(k, _)| (k.clone(), None)),
        );
        out
    }

    /// The Services whose objects changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<NsName> {
        std::mem::take(&mut self.dirty)
    }

    pub fn len(&self) -> usize {
        self.services.len() + self.slices.len() + self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
