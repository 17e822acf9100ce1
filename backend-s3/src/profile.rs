//! Static credentials and region of a named profile in the AWS shared files
//! (`~/.aws/credentials`, `~/.aws/config`), the one link of the AWS credential
//! chain that `object_store` does not follow itself.
//!
//! Only `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` and
//! `region` are read. Profiles that get credentials another way (SSO,
//! `role_arn`, `credential_process`) are not supported; such a profile can be
//! exported with `aws configure export-credentials --format env`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// Credentials found in a profile. Debug output hides the secrets.
#[derive(Clone, Default)]
pub struct ProfileCredentials {
    pub profile: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

impl fmt::Debug for ProfileCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileCredentials")
            .field("profile", &self.profile)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .finish()
    }
}

/// Where the shared files are, as the AWS tools look for them.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `AWS_PROFILE`.
    pub env_profile: Option<String>,
    /// `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
    pub credentials_file: Option<PathBuf>,
    /// `AWS_CONFIG_FILE`, else `~/.aws/config`.
    pub config_file: Option<PathBuf>,
}

impl Sources {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        Sources {
            env_profile: var("AWS_PROFILE"),
            credentials_file: var("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials"))),
            config_file: var("AWS_CONFIG_FILE")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws/config"))),
        }
    }
}

/// The credentials of `profile` (else `AWS_PROFILE`, else `default`).
///
/// `Ok(None)` when no profile was asked for by name and the default one is
/// not there: the rest of the chain (roles) applies. A profile asked for by
/// name (setting or `AWS_PROFILE`) that cannot be used is an error saying why;
/// the message never contains a secret.
pub fn load(
    profile: Option<&str>,
    sources: &Sources,
) -> Result<Option<ProfileCredentials>, String> {
    let named = profile
        .map(str::to_string)
        .or_else(|| sources.env_profile.clone());
    let required = named.is_some();
    let name = named.unwrap_or_else(|| "default".to_string());
    let missing = |why: String| if required { Err(why) } else { Ok(None) };

    let Some(path) = &sources.credentials_file else {
        return missing(format!(
            "profile {name:?}: no home directory to find ~/.aws/credentials in"
        ));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return missing(format!(
                "profile {name:?}: cannot read {}: {e}",
                path.display()
            ))
        }
    };
    let sections = parse_ini(&text);
    let Some(section) = sections.get(&name) else {
        return missing(format!("profile {name:?} is not in {}", path.display()));
    };
    let (Some(id), Some(secret)) = (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) else {
        return missing(format!(
            "profile {name:?} in {} has no aws_access_key_id and aws_secret_access_key \
             (SSO, role_arn and credential_process profiles are not supported: export the \
             credentials with `aws configure export-credentials --profile {name} --format env`)",
            path.display()
        ));
    };
    let region = sources
        .config_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            let sections = parse_ini(&text);
            let key = if name == "default" {
                "default".to_string()
            } else {
                format!("profile {name}")
            };
            sections.get(&key)?.get("region").cloned()
        })
        .or_else(|| section.get("region").cloned());
    Ok(Some(ProfileCredentials {
        profile: name.clone(),
        access_key_id: id.clone(),
        secret_access_key: secret.clone(),
        session_token: section.get("aws_session_token").cloned(),
        region,
    }))
}

/// `[section]` → `key = value`, comments (`#`, `;`) and blank lines skipped.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            out.get_mut(section)
                .expect("section exists")
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path, env_profile: Option<&str>) -> Sources {
        Sources {
            env_profile: env_profile.map(str::to_string),
            credentials_file: Some(dir.join("credentials")),
            config_file: Some(dir.join("config")),
        }
    }

    #[test]
    fn reads_named_and_default_profiles() {
        let dir = std::env::temp_dir().join(format!("offsite-aws-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("credentials"),
            "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n\
             [backup]\naws_access_key_id=AKIDBACKUP\naws_secret_access_key=s2\naws_session_token = t2\n\
             [sso]\nsso_session = corp\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("config"),
            "[default]\nregion = eu-west-1\n[profile backup]\nregion = eu-central-1\n",
        )
        .unwrap();

        let d = load(None, &sources(&dir, None)).unwrap().unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.region.as_deref()),
            ("AKIDDEFAULT", Some("eu-west-1"))
        );
        let b = load(Some("backup"), &sources(&dir, None)).unwrap().unwrap();
        assert_eq!(b.session_token.as_deref(), Some("t2"));
        assert_eq!(b.region.as_deref(), Some("eu-central-1"));
        let e = load(None, &sources(&dir, Some("backup"))).unwrap().unwrap();
        assert_eq!(e.access_key_id, "AKIDBACKUP");
        assert!(!format!("{b:?}").contains("s2") && !format!("{b:?}").contains("t2"));

        let err = load(Some("nope"), &sources(&dir, None)).unwrap_err();
        assert!(err.contains("\"nope\" is not in"), "{err}");
        let err = load(Some("sso"), &sources(&dir, None)).unwrap_err();
        assert!(err.contains("export-credentials"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_default_profile_is_not_an_error() {
        let dir = std::env::temp_dir().join("offsite-aws-profile-none");
        assert!(load(None, &sources(&dir, None)).unwrap().is_none());
        assert!(load(Some("x"), &sources(&dir, None)).is_err());
    }
}
