//! What this process remembers of etcd's history across its own restarts (`--state-file`): the
//! highest revision it has seen, so that after etcd is rebuilt from empty (or restored from an
//! older snapshot) a restarted replica still knows which fencing tokens were handed out.
//!
//! Invariants:
//! - the file is replaced atomically (a temporary file beside it, fsync, rename, fsync of the
//!   directory): a crash leaves the old content or the new, never a torn one;
//! - it is written before this replica's own candidate key can lead (its token is at most the
//!   revision written) and when another leader is seen, so it covers every token this replica
//!   knew of; at other times it may lag (which only makes the guard less strict, never wrong);
//! - the revision only grows: a write never records less than the file held at start.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's content.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Doc {
    /// The highest etcd revision this replica has seen.
    revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path} (--state-file): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state file {path} (--state-file) is not electd's: {why}; electd writes JSON such as \
         {{\"revision\": 1234}}. Point --state-file at a file of electd's own, or delete this one \
         if it was damaged (this replica then forgets the etcd revision it had seen: see \
         docs/operations.md, \"etcd rebuilt from empty or restored\")"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot write the state file {path} (--state-file): {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state file at a path.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: &Path) -> StateFile {
        StateFile {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The revision recorded; `None` when the file does not exist yet.
    pub fn read(&self) -> Result<Option<i64>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(self.corrupt("it is not UTF-8 text"));
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        parse(&text).map(Some).map_err(|why| self.corrupt(&why))
    }

    /// Record `revision`, atomically (see the module's invariants).
    pub fn write(&self, revision: i64) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_string(&Doc { revision }).expect("invariant: Doc serialises");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(format!("{text}\n").as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    fn corrupt(&self, why: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            why: why.to_string(),
        }
    }
}

/// The revision in a state file's text, or why it is not one.
fn parse(text: &str) -> Result<i64, String> {
    if text.trim().is_empty() {
        return Err("it is empty".into());
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| format!("{e}"))?;
    if doc.revision < 0 {
        return Err(format!("revision {} is negative", doc.revision));
    }
    Ok(doc.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Result<i64, &str>)] = &[
            ("{\"revision\": 1234}\n", Ok(1234)),
            ("{\"revision\":0}", Ok(0)),
            ("", Err("empty")),
            ("  \n", Err("empty")),
            ("1234", Err("invalid type")),
            ("{\"revision\": -3}", Err("negative")),
            ("{\"revision\": \"12\"}", Err("invalid type")),
            ("{}", Err("missing field `revision`")),
            ("{\"revision\": 12", Err("EOF")),
        ];
        for (text, want) in cases {
            match (parse(text), want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{text:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{text:?}: {g}"),
                (g, w) => panic!("{text:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(&dir.path().join("state.json"));
        assert_eq!(f.read().unwrap(), None);
        f.write(41).unwrap();
        f.write(42).unwrap();
        assert_eq!(f.read().unwrap(), Some(42));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file left behind");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"\xff\xfe garbage").unwrap();
        let e = StateFile::new(&path).read().unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("--state-file") && e.contains("not UTF-8"), "{e}");
        let missing_dir = StateFile::new(&dir.path().join("nope/state.json"));
        let e = missing_dir.write(1).unwrap_err().to_string();
        assert!(e.contains("nope/state.json"), "{e}");
    }
}
