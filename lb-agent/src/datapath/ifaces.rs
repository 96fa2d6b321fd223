//! Interfaces of the current network namespace (via netlink-backed
//! `if_nameindex`, so it is right even when /sys belongs to another
//! namespace), filtered by the operator's glob patterns.
use anyhow::{Context, Result};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

pub fn list() -> Vec<Interface> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(Interface {
                name,
                index: (*cur).if_index,
            });
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    out.sort();
    out
}

/// Which interfaces get a group of programs.
#[derive(Clone, Debug)]
pub struct Selector {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    /// `auto` was given: the default route's interface is included too.
    default_route: bool,
}

/// The pattern that stands for the interface of the default route.
pub const AUTO: &str = "auto";

fn patterns(flag: &str, list: &[String]) -> Result<Vec<glob::Pattern>> {
    list.iter()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("{flag}: bad pattern {p:?}")))
        .collect()
}

impl Selector {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include: patterns("--interfaces", include)?,
            exclude: patterns("--exclude-interfaces", exclude)?,
            default_route: false,
        })
    }

    /// The wire-facing interfaces that get XDP (none unless named; `auto`
    /// names the default route's interface, found again at each rescan).
    pub fn xdp(include: &[String]) -> Result<Self> {
        let named: Vec<String> = include.iter().filter(|p| *p != AUTO).cloned().collect();
        Ok(Self {
            include: patterns("--xdp-interfaces", &named)?,
            exclude: Vec::new(),
            default_route: named.len() != include.len(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matches_with_default(name, None)
    }

    /// Like `matches`, where `default_route` is the interface of the
    /// default route now.
    pub fn matches_with_default(&self, name: &str, default_route: Option<&str>) -> bool {
        let included = self.include.iter().any(|p| p.matches(name))
            || (self.default_route && default_route == Some(name));
        included && !self.exclude.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_stands_for_the_default_route_interface() {
        let s = Selector::xdp(&["auto".into(), "bond*".into()]).unwrap();
        assert!(s.matches_with_default("eth0", Some("eth0")));
        assert!(!s.matches_with_default("eth1", Some("eth0")));
        assert!(s.matches_with_default("bond0", None));
        assert!(!s.matches_with_default("eth0", None));
        let none = Selector::xdp(&[]).unwrap();
        assert!(!none.matches_with_default("eth0", Some("eth0")));
    }
}
