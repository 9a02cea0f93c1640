//! Key files under `keys/`: the master key material sealed with a key-encryption key derived
//! from a password by argon2id. Layout (99 bytes):
//! `prefix(6) || algorithm(1)=1 || m_cost_kib(u32) || t_cost(u32) || p_cost(u32) || salt(32) ||
//!  AES-256-GCM(kek, nonce(0), aad = first 51 bytes, master(32))`.

use super::{check_prefix, ObjectKind, Reader};
use crate::crypter::{random_bytes, MasterKey, ObjectCipher};
use crate::error::{Error, Result};

pub const KEY_FILE_LEN: usize = 6 + 1 + 12 + 32 + 32 + 16;
pub const ALG_ARGON2ID: u8 = 1;

/// argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        // OWASP's argon2id recommendation band; about 0.3 s on one core here.
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// The largest argon2id parameters a reader runs (format-spec 4.1): a key file asking for more
/// is refused by name instead of holding gigabytes for minutes on every open. Creating one
/// that large is refused too, so every key file chunkbak writes can be opened.
pub const MAX_OPEN_PARAMS: KdfParams = KdfParams {
    m_cost_kib: 1 << 20,
    t_cost: 10,
    p_cost: 16,
};

/// OWASP's minimum for argon2id (19 MiB, two passes): weaker keys need an explicit choice.
pub const OWASP_MIN_PARAMS: KdfParams = KdfParams {
    m_cost_kib: 19 * 1024,
    t_cost: 2,
    p_cost: 1,
};

impl KdfParams {
    /// Whether a reader runs these parameters (see [`MAX_OPEN_PARAMS`]).
    pub fn within_open_limits(&self) -> bool {
        let m = MAX_OPEN_PARAMS;
        self.m_cost_kib <= m.m_cost_kib && self.t_cost <= m.t_cost && self.p_cost <= m.p_cost
    }

    /// Checks parameters for a new key file: never above what readers run, and not below
    /// OWASP's minimum unless `allow_weak` (tests, throwaway repositories).
    pub fn validate_new(&self, allow_weak: bool) -> Result<()> {
        if !self.within_open_limits() {
            let m = MAX_OPEN_PARAMS;
            return Err(Error::Invalid(format!(
                "argon2id with {} KiB and {} iterations ({} lanes) is more than chunkbak runs \
                 to open a key (at most {} KiB, {} iterations, {} lanes)",
                self.m_cost_kib, self.t_cost, self.p_cost, m.m_cost_kib, m.t_cost, m.p_cost
            )));
        }
        let o = OWASP_MIN_PARAMS;
        if !allow_weak && (self.m_cost_kib < o.m_cost_kib || self.t_cost < o.t_cost) {
            return Err(Error::Invalid(format!(
                "argon2id with {} KiB and {} iterations is below OWASP's minimum ({} KiB, {} \
                 iterations): a stolen key file could be brute-forced cheaply; give \
                 --allow-weak-kdf to create it anyway",
                self.m_cost_kib, self.t_cost, o.m_cost_kib, o.t_cost
            )));
        }
        Ok(())
    }
}

fn kek(password: &[u8], salt: &[u8; 32], p: KdfParams) -> Result<[u8; 32]> {
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| Error::Config(format!("argon2 parameters {p:?}: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::Config(format!("argon2: {e}")))?;
    Ok(out)
}

pub fn seal(mk: &MasterKey, password: &[u8], p: KdfParams) -> Result<Vec<u8>> {
    seal_with_salt(mk, password, p, random_bytes())
}

pub fn seal_with_salt(
    mk: &MasterKey,
    password: &[u8],
    p: KdfParams,
    salt: [u8; 32],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(KEY_FILE_LEN);
    out.extend_from_slice(&ObjectKind::Key.prefix());
    out.push(ALG_ARGON2ID);
    out.extend_from_slice(&p.m_cost_kib.to_le_bytes());
    out.extend_from_slice(&p.t_cost.to_le_bytes());
    out.extend_from_slice(&p.p_cost.to_le_bytes());
    out.extend_from_slice(&salt);
    let k = kek(password, &salt, p)?;
    let ct = ObjectCipher::new(&k).seal(0, &out, mk.material());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Parsed key file, before the password is tried.
pub struct KeyFile {
    pub params: KdfParams,
    salt: [u8; 32],
    aad: Vec<u8>,
    ct: Vec<u8>,
}

impl KeyFile {
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        check_prefix(bytes, ObjectKind::Key, name)?;
        if bytes.len() != KEY_FILE_LEN {
            return Err(Error::corrupt(
                name,
                format!("key file of {} bytes, expected {KEY_FILE_LEN}", bytes.len()),
            ));
        }
        let mut r = Reader::new(bytes, name);
        r.bytes(6)?;
        if r.u8()? != ALG_ARGON2ID {
            return Err(r.corrupt("unknown key derivation algorithm"));
        }
        let params = KdfParams {
            m_cost_kib: r.u32()?,
            t_cost: r.u32()?,
            p_cost: r.u32()?,
        };
        // Refuse parameters that would make opening a key a denial of service.
        if params.m_cost_kib > 4 << 20 || params.t_cost > 100 || params.p_cost > 64 {
            return Err(r.corrupt(format!("implausible argon2 parameters {params:?}")));
        }
        let salt = r.array()?;
        let ct = r.bytes(48)?.to_vec();
        Ok(KeyFile {
            params,
            salt,
            aad: bytes[..51].to_vec(),
            ct,
        })
    }

    /// The master key, or `None` when the password is wrong.
    pub fn open(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        let k = kek(password, &self.salt, self.params)?;
        Ok(ObjectCipher::new(&k)
            .open(0, &self.aad, &self.ct)
            .map(|m| MasterKey::from_material(m.try_into().expect("32 bytes sealed"))))
    }
}
