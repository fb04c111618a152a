//! Channel-adapter keys and what each may reach.
//!
//! `SWITCHBOARD_ADAPTER_KEY` is a comma-separated list of entries:
//!
//! | entry | the key may post into |
//! | --- | --- |
//! | `KEY` | every workspace (an operator's key) |
//! | `WS:KEY` | workspace `WS` only |
//! | `WS/CH1+CH2:KEY` | channels `CH1` and `CH2` of workspace `WS` only |
//!
//! A scoped key sees everything outside its scope as non-existent: the same
//! `404` / `422 unknown channel` as an id that was never created.

use crate::domain::Id;

/// What an adapter key may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// Every workspace.
    Any,
    /// One workspace; with `channels`, only those channels of it.
    Workspace { id: Id, channels: Option<Vec<Id>> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterKey {
    pub key: String,
    pub scope: KeyScope,
}

impl AdapterKey {
    /// Parses one entry of `SWITCHBOARD_ADAPTER_KEY` (see the module doc).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let Some((scope, key)) = entry.split_once(':') else {
            return Self::checked(entry, KeyScope::Any);
        };
        let (ws, channels) = match scope.split_once('/') {
            None => (scope, None),
            Some((ws, list)) => {
                let channels: Vec<Id> = list.split('+').map(str::to_owned).collect();
                if channels.iter().any(String::is_empty) {
                    return Err(format!(
                        "adapter key entry for workspace {ws:?}: empty channel in {list:?}"
                    ));
                }
                (ws, Some(channels))
            }
        };
        if ws.is_empty() {
            return Err("adapter key entry with an empty workspace before ':'".to_owned());
        }
        Self::checked(
            key,
            KeyScope::Workspace {
                id: ws.to_owned(),
                channels,
            },
        )
    }

    fn checked(key: &str, scope: KeyScope) -> Result<Self, String> {
        if key.is_empty() {
            return Err("empty adapter key".to_owned());
        }
        Ok(AdapterKey {
            key: key.to_owned(),
            scope,
        })
    }

    /// Parses every entry; an error names the first bad one (never the key).
    pub fn parse_all(entries: &[String]) -> Result<Vec<Self>, String> {
        entries.iter().map(|e| Self::parse(e)).collect()
    }

    /// The workspace the key is bound to, if any.
    pub fn workspace(&self) -> Option<&str> {
        match &self.scope {
            KeyScope::Any => None,
            KeyScope::Workspace { id, .. } => Some(id),
        }
    }

    /// Whether the key is limited to some channels of its workspace.
    pub fn limits_channels(&self) -> bool {
        matches!(
            self.scope,
            KeyScope::Workspace {
                channels: Some(_),
                ..
            }
        )
    }

    /// Whether the key may reach `channel` of `workspace`.
    pub fn reaches(&self, workspace: &str, channel: Option<&str>) -> bool {
        match &self.scope {
            KeyScope::Any => true,
            KeyScope::Workspace { id, channels } => {
                id == workspace
                    && match (channels, channel) {
                        (None, _) => true,
                        (Some(list), Some(ch)) => list.iter().any(|c| c == ch),
                        (Some(_), None) => false,
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_into_scopes() {
        assert_eq!(
            AdapterKey::parse("k0").unwrap().scope,
            KeyScope::Any,
            "no colon: unscoped"
        );
        let k = AdapterKey::parse("w1:k1").unwrap();
        assert_eq!(k.key, "k1");
        assert!(k.reaches("w1", Some("any")) && !k.reaches("w2", Some("any")));
        let k = AdapterKey::parse("w1/sms+wa:k:2").unwrap();
        assert_eq!(k.key, "k:2", "only the first colon splits");
        assert!(k.reaches("w1", Some("sms")) && k.reaches("w1", Some("wa")));
        assert!(!k.reaches("w1", Some("web")) && !k.reaches("w2", Some("sms")));
        assert!(!k.reaches("w1", None));
        assert!(AdapterKey::parse(":k").is_err());
        assert!(AdapterKey::parse("w1:").is_err());
        assert!(AdapterKey::parse("w1/:k").is_err());
        assert!(AdapterKey::parse("w1/a+:k").is_err());
    }
}
