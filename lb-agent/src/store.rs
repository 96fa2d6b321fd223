//! The Kubernetes objects the agent knows, as any source delivered them.
//! Every object is validated on the way in; an invalid object never
//! replaces a valid one, so what is programmed is never lost to bad input.
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::{self, FieldError};

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

/// All objects, by kind and namespace/name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectStore {
    pub services: BTreeMap<NsName, Service>,
    pub slices: BTreeMap<NsName, EndpointSlice>,
    pub endpoints: BTreeMap<NsName, Endpoints>,
}

impl ObjectStore {
    /// Validates and stores `obj`, replacing any object with the same id.
    /// An invalid object is refused and whatever was stored stays.
    pub fn upsert(&mut self, obj: Object) -> Result<(), FieldError> {
        validate::object(&obj)?;
        let key = obj.id().key;
        match obj {
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.slices.insert(key, o);
            }
            Object::Endpoints(o) => {
                self.endpoints.insert(key, o);
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, id: &ObjectId) {
        match id.kind {
            Kind::Service => {
                self.services.remove(&id.key);
            }
            Kind::EndpointSlice => {
                self.slices.remove(&id.key);
            }
            Kind::Endpoints => {
                self.endpoints.remove(&id.key);
            }
        }
    }

    pub fn get(&self, id: &ObjectId) -> Option<Object> {
        match id.kind {
            Kind::Service => self.services.get(&id.key).cloned().map(Object::Service),
            Kind::EndpointSlice => self.slices.get(&id.key).cloned().map(Object::EndpointSlice),
            Kind::Endpoints => self.endpoints.get(&id.key).cloned().map(Object::Endpoints),
        }
    }

    pub fn len(&self) -> usize {
        self.services.len() + self.slices.len() + self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
