//! Device backups (xep/ §Device Backups): the device's state cut into
//! pieces where its content says, each stored once under its hash, and a
//! manifest naming them in order. A backup uploads the pieces that changed
//! since the last one and the manifest; nothing stored is rewritten.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::{Vault, VaultError};
use crate::client::port::Port;

/// The manifest's first line.
const MANIFEST_MAGIC: &str = "xmpp-mls backup 2";
/// Largest piece before compression (smaller if the place's blob limit is).
const PIECE: usize = 32 * 1024;

/// What a backup stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// Octets of the device's state.
    pub size: usize,
    pub pieces: usize,
    /// Pieces the vault did not have, and the octets of plaintext written for them and the manifest.
    pub new_pieces: usize,
    pub written: usize,
}

fn dir(device_id: &str) -> String {
    format!("device/{device_id}/")
}

fn manifest_name(device_id: &str) -> String {
    format!("{}manifest", dir(device_id))
}

/// A piece's name in its backup: the first 16 octets of its SHA-256, in lowercase hexadecimal.
fn piece_id(piece: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(piece)[..16])
}

/// The gear table of the rolling hash: 256 fixed pseudo-random words (SplitMix64).
const fn gear() -> [u64; 256] {
    let (mut table, mut state, mut i) = ([0u64; 256], 0x786d_7070_2d6d_6c73u64, 0);
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}
static GEAR: [u64; 256] = gear();

/// Cuts `data` into pieces of `max / 8` to `max` octets where a rolling
/// hash of the last 64 octets says, so that a change moves only the cuts
/// near it and the pieces elsewhere stay the same.
fn cut(data: &[u8], max: usize) -> Vec<&[u8]> {
    let max = max.max(64);
    let (min, bits) = (max / 8, (max / 4).ilog2());
    let mask = ((1u64 << bits) - 1) << (64 - bits);
    let (mut pieces, mut rest) = (Vec::new(), data);
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        let mut hash = 0u64;
        for (i, b) in rest.iter().enumerate().take(end).skip(min) {
            hash = (hash << 1).wrapping_add(GEAR[*b as usize]);
            if hash & mask == 0 {
                end = i + 1;
                break;
            }
        }
        let (piece, after) = rest.split_at(end);
        pieces.push(piece);
        rest = after;
    }
    pieces
}

/// The largest piece whose compressed form fits in `max_plaintext`
/// (zstd grows what it cannot compress by at most 1/128 and a header).
fn piece_limit(max_plaintext: usize) -> usize {
    PIECE.min(max_plaintext.saturating_sub(max_plaintext / 128 + 128))
}

/// Backs up the device's whole state (its key, its KeyPackages' private
/// keys, its groups, its positions): the pieces the vault lacks, then the
/// manifest, then the pieces no manifest names any more are deleted.
pub async fn backup_device<S: crate::client::storage::DeviceStorage>(
    vault: &Vault,
    port: &Port,
    device: &crate::client::Device<S>,
) -> Result<Backup, VaultError> {
    let state = device.snapshot().map_err(|e| VaultError::Device(e.to_string()))?;
    let dir = dir(device.id());
    let stored: BTreeSet<String> = vault.list_prefix(port, &dir).await?.into_iter().collect();
    let pieces = cut(&state, piece_limit(vault.max_plaintext()));
    let mut manifest = format!("{MANIFEST_MAGIC}\n{}\n{}", state.len(), data_encoding::HEXLOWER.encode(&Sha256::digest(&state)));
    let (mut named, mut new_pieces, mut written) = (BTreeSet::new(), 0, 0);
    for piece in &pieces {
        let name = format!("{dir}{}", piece_id(piece));
        manifest.push('\n');
        manifest.push_str(&name[dir.len()..]);
        if !stored.contains(&name) && !named.contains(&name) {
            let packed = zstd::encode_all(*piece, 9).map_err(|e| VaultError::Device(e.to_string()))?;
            vault.put(port, &name, 0, &packed).await?;
            (new_pieces, written) = (new_pieces + 1, written + packed.len());
        }
        named.insert(name);
    }
    vault.put_latest(port, &manifest_name(device.id()), manifest.as_bytes()).await?;
    named.insert(manifest_name(device.id()));
    for stale in stored.difference(&named) {
        vault.delete_any(port, stale).await?;
    }
    Ok(Backup { size: state.len(), pieces: pieces.len(), new_pieces, written: written + manifest.len() })
}

/// The devices with a backup in the vault.
pub async fn backed_up_devices(vault: &Vault, port: &Port) -> Result<Vec<String>, VaultError> {
    let names = vault.list_prefix(port, "device/").await?;
    Ok(names.into_iter().filter_map(|n| n.strip_prefix("device/")?.strip_suffix("/manifest").map(str::to_owned)).collect())
}

/// Writes the backed-up state of `device_id` to `path` (which must not
/// exist) if every piece and the whole match the manifest's hashes; open
/// it with [`crate::client::Device::open`] and catch up.
pub async fn restore_device(vault: &Vault, port: &Port, device_id: &str, path: &std::path::Path) -> Result<(), VaultError> {
    let corrupt = || VaultError::Corrupt(manifest_name(device_id));
    let (_, manifest) = vault.get(port, &manifest_name(device_id)).await?.ok_or_else(corrupt)?;
    let manifest = String::from_utf8(manifest).map_err(|_| corrupt())?;
    let mut lines = manifest.lines();
    if lines.next() != Some(MANIFEST_MAGIC) {
        return Err(corrupt());
    }
    let size: usize = lines.next().and_then(|l| l.parse().ok()).ok_or_else(corrupt)?;
    let hash = lines.next().ok_or_else(corrupt)?;
    let mut state = Vec::new();
    for id in lines {
        let name = format!("{}{id}", dir(device_id));
        let (_, packed) = vault.get(port, &name).await?.ok_or_else(corrupt)?;
        let piece = zstd::decode_all(packed.as_slice()).map_err(|_| VaultError::Corrupt(name.clone()))?;
        if piece_id(&piece) != id || state.len() + piece.len() > size {
            return Err(VaultError::Corrupt(name));
        }
        state.extend_from_slice(&piece);
    }
    if state.len() != size || data_encoding::HEXLOWER.encode(&Sha256::digest(&state)) != hash {
        return Err(corrupt());
    }
    crate::store::local::write_private(path, &state).map_err(|e| VaultError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn pieces_are_within_bounds_and_rejoin() {
        let data = pseudo_random(300_000, 1);
        let pieces = cut(&data, PIECE);
        assert_eq!(pieces.concat(), data);
        assert!(pieces.iter().all(|p| p.len() <= PIECE));
        assert!(pieces[..pieces.len() - 1].iter().all(|p| p.len() >= PIECE / 8));
        assert!(pieces.len() >= 300_000 / PIECE && pieces.len() <= 300_000 / (PIECE / 8), "{}", pieces.len());
    }

    #[test]
    fn an_insertion_changes_only_the_pieces_near_it() {
        let data = pseudo_random(300_000, 2);
        let mut changed = data.clone();
        changed.splice(150_000..150_000, *b"an inserted row");
        let ids = |d: &[u8]| cut(d, PIECE).into_iter().map(piece_id).collect::<BTreeSet<_>>();
        let (before, after) = (ids(&data), ids(&changed));
        assert!(after.difference(&before).count() <= 2, "{} new of {}", after.difference(&before).count(), after.len());
    }

    #[test]
    fn a_compressed_piece_fits_the_place() {
        for max_plaintext in [8192 - 48, 65_536 - 48, 160 * 1024 - 48] {
            let limit = piece_limit(max_plaintext);
            let worst = zstd::encode_all(pseudo_random(limit, 3).as_slice(), 9).unwrap();
            assert!(worst.len() <= max_plaintext, "{} > {max_plaintext}", worst.len());
        }
    }
}
