//! Format 2 key bundles (docs/design/format-v2.md, 2.3): one holder's
//! secrets, `keys/<generation, 4 digits>/<holder id>-<8 hex>`, zstd then age
//! to that holder alone. A bundle of generation g carries the secrets of
//! every generation up to g, so a holder needs one bundle.
//!
//! A recipient's bundle holds every data key D and metadata key M; a
//! writer's only the Ms (it can deduplicate, list and prune, never decrypt
//! a pack). Both hold the chunk-id key K.
//!
//! Anyone can encrypt a file to a public recipient, so a bundle proves
//! nothing by itself: [`Bundle::open`] checks every secret's public half
//! against the verified keyring, and K against its `chunk_key_check`, and
//! refuses the bundle otherwise. This module never writes to storage and
//! never trusts a bundle it did not check.

use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::keyring::{KeyringBody, KeyringError};
use crate::keys::v2::{chunk_key_check, holder_id, KeysetId, WriterPublic};
use crate::repo::{KEYS, METADATA_LEVEL};

/// Who a bundle is wrapped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A recipient (`age1...`): gets data keys too.
    Recipient(x25519::Recipient),
    /// A writer (`offsite-writer1...`): metadata keys only.
    Writer(WriterPublic),
}

impl Holder {
    /// The public string, as the keyring and the bundle name it.
    pub fn public_string(&self) -> String {
        match self {
            Holder::Recipient(r) => r.to_string(),
            Holder::Writer(w) => w.to_string(),
        }
    }

    /// The age recipient the bundle is encrypted to.
    fn age_recipient(&self) -> x25519::Recipient {
        match self {
            Holder::Recipient(r) => r.clone(),
            Holder::Writer(w) => w.box_recipient(),
        }
    }

    fn gets_data(&self) -> bool {
        matches!(self, Holder::Recipient(_))
    }
}

/// One generation's secrets. `data` is `None` in a writer's bundle.
#[derive(Clone)]
pub struct GenerationKeys {
    pub n: u32,
    pub data: Option<x25519::Identity>,
    pub metadata: x25519::Identity,
}

impl GenerationKeys {
    /// Fresh random keys for generation `n`.
    pub fn generate(n: u32) -> GenerationKeys {
        GenerationKeys {
            n,
            data: Some(x25519::Identity::generate()),
            metadata: x25519::Identity::generate(),
        }
    }
}

/// The secrets one holder has, checked against the keyring (or about to
/// be written).
#[derive(Clone)]
pub struct Bundle {
    pub holder: Holder,
    /// The newest generation it carries.
    pub generation: u32,
    pub chunk_key: [u8; 32],
    /// Generations 1..=`generation`, in order.
    pub generations: Vec<GenerationKeys>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bundle({} up to generation {})",
            self.holder.public_string(),
            self.generation
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    format: String,
    version: u32,
    keyset: String,
    holder: String,
    generation: u32,
    chunk_key: String,
    generations: Vec<GenerationJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationJson {
    n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    metadata: String,
}

/// A fresh name for a bundle of `generation` wrapped to `holder`: the
/// random suffix makes every write a new key, so an interrupted admin
/// command never collides with itself.
pub fn bundle_key(generation: u32, holder: &Holder) -> String {
    format!(
        "{KEYS}{generation:04}/{}-{}",
        holder_id(&holder.public_string()),
        hex::encode(rand::random::<[u8; 4]>())
    )
}

/// Whether `key` is a bundle name of `generation` for the holder `public`.
pub fn names_holder(key: &str, generation: u32, public: &str) -> bool {
    let prefix = format!("{KEYS}{generation:04}/{}-", holder_id(public));
    key.strip_prefix(&prefix)
        .is_some_and(|rest| rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Bundle {
    /// The same secrets for another holder: a writer gets no data keys.
    pub fn for_holder(&self, holder: Holder) -> Bundle {
        let data = holder.gets_data();
        Bundle {
            generations: self
                .generations
                .iter()
                .map(|g| GenerationKeys {
                    data: if data { g.data.clone() } else { None },
                    ..g.clone()
                })
                .collect(),
            holder,
            ..self.clone()
        }
    }

    /// The bundle as stored: JSON, zstd, age to the holder alone.
    pub fn seal(&self, keyset: &KeysetId) -> Result<Vec<u8>> {
        let secret = |id: &x25519::Identity| id.to_string().expose_secret().to_string();
        let json = BundleJson {
            format: "offsite-keys".into(),
            version: 2,
            keyset: keyset.to_string(),
            holder: self.holder.public_string(),
            generation: self.generation,
            chunk_key: hex::encode(self.chunk_key),
            generations: self
                .generations
                .iter()
                .map(|g| GenerationJson {
                    n: g.n,
                    data: g.data.as_ref().map(secret),
                    metadata: secret(&g.metadata),
                })
                .collect(),
        };
        let plain = serde_json::to_vec(&json).expect("a bundle serializes");
        let recipient = self.holder.age_recipient();
        codec::encode(&plain, &[&recipient as &dyn age::Recipient], METADATA_LEVEL)
            .map_err(|e| Error::io("encoding a key bundle", e))
    }

    /// Decrypts the bundle `raw` stored under `key` with `identity` and
    /// checks it is exactly what `keyring` says `holder` holds at the
    /// keyring's current generation.
    pub fn open(
        raw: &[u8],
        key: &str,
        identity: &dyn age::Identity,
        holder: &Holder,
        keyring: &KeyringBody,
    ) -> Result<Bundle> {
        let plain = codec::decode(raw, std::iter::once(identity), key)?;
        let forged = |reason: String| {
            Error::from(KeyringError::ForgedBundle {
                key: key.to_string(),
                reason,
            })
        };
        let json: BundleJson =
            serde_json::from_slice(&plain).map_err(|e| forged(format!("not a key bundle: {e}")))?;
        let bundle = from_json(json, holder, keyring).map_err(forged)?;
        Ok(bundle)
    }
}

/// The bundle `json` names, if every field is what the keyring says.
fn from_json(
    json: BundleJson,
    holder: &Holder,
    keyring: &KeyringBody,
) -> std::result::Result<Bundle, String> {
    if json.format != "offsite-keys" || json.version != 2 {
        return Err(format!("format {:?} version {}", json.format, json.version));
    }
    if json.keyset != keyring.keyset {
        return Err(format!("it is of key set {}", json.keyset));
    }
    if json.holder != holder.public_string() {
        return Err(format!("it is wrapped for {}", json.holder));
    }
    if json.generation != keyring.generation || json.generations.len() != json.generation as usize {
        return Err(format!(
            "it carries generation {} of {}",
            json.generation, keyring.generation
        ));
    }
    let mut chunk_key = [0u8; 32];
    hex::decode_to_slice(&json.chunk_key, &mut chunk_key)
        .map_err(|_| "its chunk key is not 64 hex digits".to_string())?;
    if chunk_key_check(&chunk_key) != keyring.chunk_key_check {
        return Err("its chunk key does not match the keyring's chunk_key_check".into());
    }
    let mut generations = Vec::new();
    for (g, expected) in json.generations.into_iter().zip(&keyring.generations) {
        generations.push(generation_from_json(g, expected, holder.gets_data())?);
    }
    Ok(Bundle {
        holder: holder.clone(),
        generation: keyring.generation,
        chunk_key,
        generations,
    })
}

fn generation_from_json(
    g: GenerationJson,
    expected: &crate::keyring::Generation,
    with_data: bool,
) -> std::result::Result<GenerationKeys, String> {
    let n = expected.n;
    let parse = |text: &str, what: &str, public: &str| {
        let id = x25519::Identity::from_str(text)
            .map_err(|_| format!("generation {n}: its {what} key is not an age identity"))?;
        if id.to_public().to_string() != public {
            return Err(format!(
                "generation {n}: its {what} key is not the keyring's {what}_recipient"
            ));
        }
        Ok(id)
    };
    if g.n != n {
        return Err(format!("generation {} where {n} belongs", g.n));
    }
    let data = match (g.data, with_data) {
        (Some(d), true) => Some(parse(&d, "data", &expected.data_recipient)?),
        (None, false) => None,
        (Some(_), false) => return Err("a writer's bundle holds a data key".into()),
        (None, true) => return Err(format!("generation {n} has no data key")),
    };
    Ok(GenerationKeys {
        n,
        data,
        metadata: parse(&g.metadata, "metadata", &expected.metadata_recipient)?,
    })
}
