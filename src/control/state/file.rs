//! The file store: `state.json` in a directory, replaced atomically on every write.
//!
//! A write goes to a temporary file, which is flushed to disk (`fsync`), renamed over
//! `state.json`, and then the directory itself is flushed, so that the rename is on disk
//! too. After a crash at any point, `state.json` is either the previous document or the new
//! one, never a mix. A `lock` file, locked for the life of the process, keeps a second Weir
//! off the same directory (two writers would overwrite each other's changes).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Document, StoreError};

const STATE: &str = "state.json";
const TEMP: &str = ".state.json.tmp";

/// A state directory held by this process.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    path: PathBuf,
    /// Held locked until the process exits: the `lock` file, and the directory itself (so
    /// that removing the lock file does not let a second weir in).
    _lock: (File, File),
}

impl FileStore {
    /// Creates the directory if needed and locks it.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let unavailable = |what: &str, e: std::io::Error| {
            StoreError::Unavailable(format!("state directory {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| unavailable("cannot create it", e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable("cannot open its lock file", e))?;
        let directory = File::open(dir).map_err(|e| unavailable("cannot open it", e))?;
        for held in [&lock, &directory] {
            match held.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Unavailable(format!(
                        "state directory {} is in use by another weir (it holds {} or the directory); give each \
                         weir its own state.dir",
                        dir.display(),
                        lock_path.display()
                    )));
                }
                Err(fs::TryLockError::Error(e)) => return Err(unavailable("cannot lock it", e)),
            }
        }
        Ok(FileStore { dir: dir.to_path_buf(), path: dir.join(STATE), _lock: (lock, directory) })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored document, `None` when there is no state file yet.
    pub async fn load(&self) -> Result<Option<Document>, StoreError> {
        let path = self.path.clone();
        let unreadable = |reason: String| StoreError::Unreadable { what: path.display().to_string(), reason };
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(e.to_string())),
        };
        Document::parse(&bytes).map(Some).map_err(unreadable)
    }

    /// Replaces the state file with `text`, durably, before returning.
    pub async fn write(&self, text: Vec<u8>) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || replace(&dir, &text))
            .await
            .map_err(|e| StoreError::Unavailable(format!("state write task failed: {e}")))?
            .map_err(|e| StoreError::Unavailable(format!("cannot write the state in {}: {e}", self.dir.display())))
    }

    /// Renames an unreadable state file to `state.json.unreadable-<unix seconds>`.
    pub async fn set_aside(&self) -> Result<String, StoreError> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let aside = self.dir.join(format!("{STATE}.unreadable-{secs}"));
        tokio::fs::rename(&self.path, &aside)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot move {} aside: {e}", self.path.display())))?;
        Ok(aside.display().to_string())
    }
}

/// Writes `text` to a temporary file, syncs it, renames it over the state file and syncs
/// the directory.
fn replace(dir: &Path, text: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(TEMP);
    let written = (|| {
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&temp)?;
        f.write_all(text)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A full disk leaves a partial file: give its space back now, not at the next write.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fs::rename(&temp, dir.join(STATE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::FORMAT;

    fn doc(sequence: u64) -> Document {
        Document { format: FORMAT, sequence, written_by: "t".into(), apps: Default::default() }
    }

    #[tokio::test]
    async fn writes_load_back_and_the_directory_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().await.unwrap(), None);
        store.write(doc(1).to_json().unwrap()).await.unwrap();
        store.write(doc(2).to_json().unwrap()).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(doc(2)));
        // Removing the lock file does not let a second one in: the directory is locked too.
        std::fs::remove_file(dir.path().join("lock")).unwrap();
        assert!(FileStore::open(dir.path()).is_err(), "a second store on a directory in use");
        let second = FileStore::open(dir.path()).unwrap_err();
        assert!(second.to_string().contains("in use by another weir"), "{second}");
        drop(store);
        assert!(FileStore::open(dir.path()).is_ok(), "the lock goes with the process's handle");
    }

    #[tokio::test]
    async fn unreadable_state_is_named_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE), b"{\"format\": 1, \"seq").unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let e = store.load().await.unwrap_err();
        assert!(matches!(&e, StoreError::Unreadable { what, .. } if what.ends_with("state.json")), "{e}");
        let aside = store.set_aside().await.unwrap();
        assert!(aside.contains("state.json.unreadable-"));
        assert_eq!(fs::read(&aside).unwrap(), b"{\"format\": 1, \"seq");
        assert_eq!(store.load().await.unwrap(), None);
    }
}
