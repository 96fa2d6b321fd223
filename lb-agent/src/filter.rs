//! Which Services this proxy programs, by kube-proxy's label conventions.
//! Applied by the model, so every source (manifests or the API) agrees.
use crate::entry::ServiceEntry;

/// A Service carrying this label belongs to the proxy it names.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// A Service carrying this label is headless for every proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Why a Service is left to someone else, or `None` when it is ours.
/// `proxy_name` is our `--service-proxy-name` (none: we take only
/// Services without the label, as kube-proxy does).
pub fn skip_reason(svc: &ServiceEntry, proxy_name: Option<&str>) -> Option<String> {
    if svc.headless_label {
        return Some(format!("label {HEADLESS_LABEL} is set"));
    }
    match &svc.proxy_name {
        Some(name) if Some(name.as_str()) != proxy_name => Some(format!(
            "label {SERVICE_PROXY_NAME_LABEL}={name} names another proxy"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(labels: &[(&str, &str)]) -> ServiceEntry {
        let mut s = k8s_openapi::api::core::v1::Service::default();
        s.metadata.name = Some("s".into());
        s.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        match crate::entry::Entry::from_object(&crate::store::Object::Service(s))
            .unwrap()
            .body
        {
            crate::entry::Body::Service(s) => s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn proxy_name_and_headless_labels() {
        assert_eq!(skip_reason(&ServiceEntry::default(), None), None);
        assert_eq!(skip_reason(&svc(&[("app", "x")]), None), None);
        let other = svc(&[(SERVICE_PROXY_NAME_LABEL, "other")]);
        assert!(skip_reason(&other, None).unwrap().contains("=other"));
        assert!(skip_reason(&other, Some("ferrolb")).is_some());
        let ours = svc(&[(SERVICE_PROXY_NAME_LABEL, "ferrolb")]);
        assert_eq!(skip_reason(&ours, Some("ferrolb")), None);
        let headless = svc(&[(HEADLESS_LABEL, "")]);
        assert!(skip_reason(&headless, Some("ferrolb")).is_some());
    }
}
