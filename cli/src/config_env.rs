//! Which environment variables are configuration.
//!
//! `OFFSITE_<SECTION>__<KEY>` sets `<key>` of one of the tables in
//! [`SECTIONS`] (`OFFSITE_ENCRYPTION__IDENTITY_FILE=...`), overriding the
//! file. Only those settings are read from the environment. offsite's own
//! other variables (the config path, log filter, passphrase, the variables
//! hooks receive, ...: [`OWN_VARIABLES`]) are passed over silently, and any
//! other `OFFSITE_*` variable is ignored with a warning: a hook that runs
//! offsite inherits `OFFSITE_EVENT` and friends, and a stray variable must
//! never stop a backup. The value of a setting that is read is checked like
//! the file's, so a typo there is still a configuration error.
//!
//! The keys of each table are taken from its `Deserialize` impl, so a setting
//! added to a table can be set from the environment with no list to update;
//! [`FILE_ONLY`] names the keys that are not. `[serve]`'s keys are read only
//! when the file has a `[serve]` section: whether the API is served at all
//! is the file's to say, since its tokens are there.

use std::collections::BTreeSet;

use figment::providers::Env;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::config::{
    BackupSettings, DrillSettings, Encryption, ScheduleSettings, ServeSettings, StatusSettings,
};
use crate::config_retention::RetentionConfig;

pub const PREFIX: &str = "OFFSITE_";

/// The tables whose keys the environment may set.
pub const SECTIONS: &[&str] = &[
    "encryption",
    "backup",
    "retention",
    "status",
    "drill",
    "schedule",
    "serve",
];

/// Keys of those tables set in the file only. `[[serve.tokens]]` grant
/// access to the API: who may change the environment of a process (a unit
/// file's `Environment=`, a container's `-e`, a parent process) must not be
/// able to add a way in that the config file, the one place access is
/// granted and reviewed, does not show.
pub const FILE_ONLY: &[&str] = &["serve.tokens"];

/// offsite's variables that are not settings (without the prefix).
pub const OWN_VARIABLES: &[&str] = &[
    "CONFIG",
    "LOG",
    "IDENTITY_PASSPHRASE",
    "LIBDUCKDB",
    "FAILPOINTS",
    // Set for source hooks (see hooks.rs); a hook may run offsite.
    "EVENT",
    "ERROR",
    "SOURCE",
    "SOURCE_KIND",
    "SOURCE_PATH",
];

/// Every setting the environment may set, as `section.key`; `[serve]`'s
/// only when `serve` (the file has a `[serve]` section).
pub fn settings(serve: bool) -> BTreeSet<String> {
    let tables: [(&str, &[&str]); 7] = [
        ("encryption", fields::<Encryption>()),
        ("backup", fields::<BackupSettings>()),
        ("retention", fields::<RetentionConfig>()),
        ("status", fields::<StatusSettings>()),
        ("drill", fields::<DrillSettings>()),
        ("schedule", fields::<ScheduleSettings>()),
        ("serve", fields::<ServeSettings>()),
    ];
    debug_assert!(tables.iter().map(|(s, _)| *s).eq(SECTIONS.iter().copied()));
    tables
        .iter()
        .filter(|(section, _)| serve || *section != "serve")
        .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
        .filter(|s| !FILE_ONLY.contains(&s.as_str()))
        .collect()
}

/// What a variable name means.
#[derive(Debug, PartialEq, Eq)]
pub enum Variable {
    /// A setting, as `section.key`.
    Setting(String),
    /// One of offsite's other variables.
    Own,
    /// An `OFFSITE_*` variable that is neither.
    Unknown,
    /// Not an `OFFSITE_*` variable.
    Other,
}

/// Classifies `name` the way figment maps it: the prefix matched without
/// regard to case, the rest lowercased, `__` separating levels.
pub fn classify(name: &str, settings: &BTreeSet<String>) -> Variable {
    let Some(rest) = name
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &name[PREFIX.len()..])
    else {
        return Variable::Other;
    };
    if OWN_VARIABLES.iter().any(|v| v.eq_ignore_ascii_case(rest)) {
        return Variable::Own;
    }
    let key = rest.trim().to_ascii_lowercase().replace("__", ".");
    if settings.contains(&key) {
        Variable::Setting(key)
    } else {
        Variable::Unknown
    }
}

/// The environment variable that sets `section.key`.
pub fn variable_name(setting: &str) -> String {
    format!(
        "{PREFIX}{}",
        setting.replace('.', "__").to_ascii_uppercase()
    )
}

/// The provider of the settings in the environment (`[serve]`'s when
/// `serve`: see [`settings`]); calls `warn` with the name of each
/// `OFFSITE_*` variable it ignores.
pub fn provider(serve: bool, mut warn: impl FnMut(&str)) -> Env {
    let settings = settings(serve);
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| classify(k, &settings) == Variable::Unknown)
        .collect();
    names.sort();
    for n in &names {
        warn(n);
    }
    Env::prefixed(PREFIX)
        .split("__")
        .filter(move |key| settings.contains(&key.as_str().to_ascii_lowercase()))
}

/// The field names of a struct, as its derived `Deserialize` declares them.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    // The probe stops the deserializer at its first call, so this fails by design.
    let _ = T::deserialize(FieldNames(&mut found));
    found
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_tables_and_other_names_are_not_settings() {
        let s = settings(true);
        for key in [
            "encryption.identity_file",
            "encryption.recipients",
            "backup.compression_level",
            "retention.keep_daily",
            "status.max_age",
            "drill.rto_target",
            "schedule.backup",
            "serve.listen",
            "serve.restore_in_place",
        ] {
            assert!(s.contains(key), "{key} in {s:?}");
        }
        assert!(
            !s.contains("serve.tokens"),
            "tokens are set in the file only"
        );
        let without_serve = settings(false);
        assert!(without_serve.contains("backup.compression_level"));
        assert!(!without_serve.iter().any(|k| k.starts_with("serve.")));
        assert_eq!(
            classify("OFFSITE_ENCRYPTION__IDENTITY_FILE", &s),
            Variable::Setting("encryption.identity_file".into())
        );
        assert_eq!(
            classify("offsite_backup__pack_size_mib", &s),
            Variable::Setting("backup.pack_size_mib".into())
        );
        for own in ["OFFSITE_EVENT", "OFFSITE_CONFIG", "OFFSITE_SOURCE_PATH"] {
            assert_eq!(classify(own, &s), Variable::Own, "{own}");
        }
        for unknown in [
            "OFFSITE_BOGUS",
            "OFFSITE_BACKUP",
            "OFFSITE_BACKUP__TYPO",
            "OFFSITE_SOURCES__NAME",
            "OFFSITE_BACKUP_COMPRESSION_LEVEL",
        ] {
            assert_eq!(classify(unknown, &s), Variable::Unknown, "{unknown}");
        }
        assert_eq!(classify("HOME", &s), Variable::Other);
        assert_eq!(
            variable_name("backup.compression_level"),
            "OFFSITE_BACKUP__COMPRESSION_LEVEL"
        );
    }
}
