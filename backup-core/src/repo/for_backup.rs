//! How a backup opens its targets: each existing repository as it is (a
//! format 2 one with this host's [`Access`], a format 1 one checked against
//! the recipients), and each empty target made the repository its
//! [`NewFormat`] says. Format 2 is the default (docs/format.md).
//!
//! Chunk ids are keyed per key set, and one read of a source serves every
//! target of its key set, so the empty targets that are to be format 2 get
//! one key set: the key set of a format 2 repository of this run or of the
//! config's other targets, when one opened (its keyring and bundles are
//! copied, [`init::join`]: a target added later joins the others, and a
//! host with only a writer key can add one), else a new one made for them
//! all together ([`init::init`]). While a target that may hold a key set
//! cannot be read (a storage error, or a format 2 repository this host
//! cannot open), nothing is created ([`Error::CreationWaits`]): a second
//! key set would split the targets for good. A new
//! key set needs the owner (who signs the first keyring) and an [`Access`]
//! that trusts that owner and holds its identity, so that the backup signs
//! as the owner; a host without them (recipients only, or a writer key)
//! gets [`Error::NoOwnerToCreate`] for each such target and writes nothing.
//!
//! Never: create a repository on a target that holds anything (init and
//! [`Repository::init_v1`] refuse, and every put is create-if-absent), or
//! fail the other targets for one target's failure. When two hosts create
//! the same target at once, the one whose `config` landed wins and the
//! other uses it, as for format 1.

use std::sync::Arc;

use super::{init, Access, Repository};
use crate::error::{Error, Result};
use crate::keyadmin::Owner;
use crate::keys::Keys;
use crate::keyset::Holding;
use crate::storage::Storage;

/// What a backup makes of an empty target (`format` of `[[targets]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NewFormat {
    /// Unsigned snapshots and fixed recipients, for the configured recipients.
    V1,
    /// Signed snapshots and changeable keys, owned by the [`Creator`].
    #[default]
    V2,
}

/// Who creates format 2 repositories on this host: the owner and the
/// recipients that get key bundles.
#[derive(Debug, Clone, Copy)]
pub struct Creator<'a> {
    pub owner: &'a Owner,
    pub recipients: &'a [init::NamedRecipient],
}

impl Repository {
    /// Opens each of `targets` for a backup (module doc); one result per
    /// target, in order. `others` are the configured targets this run does
    /// not write to: asked only for a key set to join when one is created.
    pub async fn open_for_backup(
        targets: &[(Arc<dyn Storage>, NewFormat)],
        others: &[Arc<dyn Storage>],
        keys: Option<&Keys>,
        access: Option<&Access>,
        creator: Option<Creator<'_>>,
    ) -> Vec<Result<Repository>> {
        // The repositories there first: one of them may lend its key set.
        let mut opened: Vec<Option<Result<Repository>>> = Vec::with_capacity(targets.len());
        let mut seen = KeySets::default();
        for (storage, _) in targets {
            let repo = Self::probe(storage, keys, access, &mut seen).await;
            opened.push(repo.map(|r| r.map(|r| seen.lend(r))));
        }
        let to_create: Vec<usize> = (0..targets.len())
            .filter(|&i| opened[i].is_none() && targets[i].1 == NewFormat::V2)
            .collect();
        let storages: Vec<_> = to_create.iter().map(|&i| targets[i].0.clone()).collect();
        if !storages.is_empty() && seen.donor.is_none() {
            for storage in others {
                if let Some(Ok(repo)) = Self::probe(storage, keys, access, &mut seen).await {
                    seen.lend(repo);
                }
            }
        }
        let made = match (&seen.donor, &seen.unread) {
            (Some(from), _) => join_all(from, &storages).await,
            (None, Some(other)) => storages.iter().map(|t| waits(t, other)).collect(),
            (None, None) => create_v2(&storages, access, creator).await,
        };
        for (i, made) in to_create.into_iter().zip(made) {
            let repo = Self::after_create(targets[i].0.clone(), made, access).await;
            opened[i] = Some(repo);
        }
        let mut all = Vec::with_capacity(targets.len());
        for ((storage, _), repo) in targets.iter().zip(opened) {
            all.push(match repo {
                Some(repo) => repo,
                // Empty, and to be format 1.
                None => match keys {
                    Some(keys) => Self::init_v1(storage.clone(), keys, storage.describe()).await,
                    None => Err(no_recipients()),
                },
            });
        }
        all
    }

    /// `storage`'s repository as [`Self::existing`] opens it, `None` when
    /// the target holds none; a target that could not be read, or holds a
    /// format 2 repository this host cannot open, is noted in `seen` (it
    /// may hold the key set a new repository must join).
    async fn probe(
        storage: &Arc<dyn Storage>,
        keys: Option<&Keys>,
        access: Option<&Access>,
        seen: &mut KeySets,
    ) -> Option<Result<Repository>> {
        let repo = match Self::open_any(storage.clone()).await {
            Ok(repo) => repo,
            Err(Error::NotARepository { .. }) => return None,
            Err(e) => {
                seen.unread.get_or_insert_with(|| storage.describe());
                return Some(Err(e));
            }
        };
        let format_2 = repo.config.keyset().is_some();
        let opened = Self::existing(repo, keys, access).await;
        if format_2 && opened.is_err() {
            seen.unread.get_or_insert_with(|| storage.describe());
        }
        Some(opened)
    }

    /// A repository that was there: format 2 opened with `access`, format
    /// 1 checked against `keys`.
    async fn existing(
        repo: Repository,
        keys: Option<&Keys>,
        access: Option<&Access>,
    ) -> Result<Repository> {
        if repo.config.keyset().is_some() {
            return repo.with_access(access).await;
        }
        let repo = repo.format_1_only()?;
        repo.check_keys(keys.ok_or_else(no_recipients)?)?;
        Ok(repo)
    }

    /// Opens a target this backup tried to create: `made` says whether its
    /// init succeeded. When it failed, a format 2 `config` there now is
    /// another host's, made at the same time (init's puts are
    /// create-if-absent), and is used; anything else is the init's error.
    async fn after_create(
        storage: Arc<dyn Storage>,
        made: Result<()>,
        access: Option<&Access>,
    ) -> Result<Repository> {
        let opened = Self::open_any(storage).await;
        match (made, opened) {
            (Ok(()), opened) => opened?.with_access(access).await,
            (Err(_), Ok(repo)) if repo.config.keyset().is_some() => repo.with_access(access).await,
            (Err(e), _) => Err(e),
        }
    }
}

fn no_recipients() -> Error {
    Error::Key(
        "no recipients configured: set encryption.recipients to at least one age public key \
         (age1...), e.g. the one `offsite keygen` prints"
            .into(),
    )
}

/// What probing the targets found out about key sets: the first format 2
/// repository opened (the donor), and the first target that might hold
/// one but could not be read.
#[derive(Default)]
struct KeySets {
    donor: Option<Repository>,
    unread: Option<String>,
}

impl KeySets {
    /// Notes `repo` as the donor if it is the first format 2 one; returns it.
    fn lend(&mut self, repo: Repository) -> Repository {
        if self.donor.is_none() && repo.keyset().is_some() {
            self.donor = Some(repo.clone());
        }
        repo
    }
}

/// Why `target` is not created in this run.
fn waits(target: &Arc<dyn Storage>, other: &str) -> Result<()> {
    Err(Error::CreationWaits {
        target: target.describe(),
        other: other.to_string(),
    })
}

/// Makes each of `targets` a repository of `from`'s key set
/// ([`init::join`]); one result per target.
async fn join_all(from: &Repository, targets: &[Arc<dyn Storage>]) -> Vec<Result<()>> {
    let mut each = Vec::with_capacity(targets.len());
    for t in targets {
        each.push(init::join(from, t.as_ref()).await);
    }
    each
}

/// Creates `targets` as one format 2 key set; one result per target. When
/// the joint init fails (one target holds stray objects, or a write failed
/// part-way), the targets are taken one by one: the first that is (or now
/// becomes) a repository lends its key set to the others, which join it,
/// so one target's problem stays its own and the key set stays one.
async fn create_v2(
    targets: &[Arc<dyn Storage>],
    access: Option<&Access>,
    creator: Option<Creator<'_>>,
) -> Vec<Result<()>> {
    let refuse = |t: &Arc<dyn Storage>| {
        Err(Error::NoOwnerToCreate {
            target: t.describe(),
        })
    };
    let (Some(access), Some(creator)) = (access, creator.filter(|c| can_create(c, access))) else {
        return targets.iter().map(refuse).collect();
    };
    let memory = access.memory.as_ref();
    let (owner, recipients) = (creator.owner, creator.recipients);
    if targets.is_empty() || init::init(targets, owner, recipients, memory).await.is_ok() {
        return targets.iter().map(|_| Ok(())).collect();
    }
    let mut donor = None;
    for t in targets {
        donor = landed(t, access).await;
        if donor.is_some() {
            break;
        }
    }
    let mut each = Vec::with_capacity(targets.len());
    for t in targets {
        let one = match &donor {
            Some(from) => init::join(from, t.as_ref()).await,
            None => {
                let made = init::init(std::slice::from_ref(t), owner, recipients, memory).await;
                if made.is_ok() {
                    donor = landed(t, access).await;
                }
                made.map(drop)
            }
        };
        each.push(one);
    }
    each
}

/// `target`'s format 2 repository opened with `access`, if it has one now.
async fn landed(target: &Arc<dyn Storage>, access: &Access) -> Option<Repository> {
    let repo = Repository::open_any(target.clone()).await.ok()?;
    repo.config.keyset()?;
    repo.with_access(Some(access)).await.ok()
}

/// Whether a backup through `access` may create a repository owned by
/// `creator`: `access` trusts that owner and signs with its identity.
fn can_create(creator: &Creator<'_>, access: Option<&Access>) -> bool {
    access.is_some_and(|a| {
        a.trust == creator.owner.public() && matches!(a.holding, Holding::Identities(_))
    })
}
