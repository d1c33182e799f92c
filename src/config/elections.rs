//! Several elections in one electd: the config file's `[[elections]]` tables, each with its
//! `name`, an optional `command` (an array: program and arguments) and its own `stop_grace`,
//! `on_exit` and `priority` (the top-level settings when absent). Parsed with the same parsers
//! as the settings ([`super::parse`]); every error names the table and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ConfigError, OnExit, Origin, Timing, parse};

/// The keys an `[[elections]]` table may hold.
pub const TABLE_KEYS: [&str; 5] = ["name", "command", "stop_grace", "on_exit", "priority"];

/// One `[[elections]]` table as given: its values as text (the command as a list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// 1-based place among the file's `[[elections]]` tables.
    pub number: usize,
    pub values: BTreeMap<&'static str, String>,
    pub command: Option<Vec<String>>,
}

/// One election this electd takes part in, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    pub name: String,
    /// Empty: a sidecar election (the app beside electd follows `/role`'s budget).
    pub command: Vec<String>,
    pub stop_grace: Duration,
    pub on_exit: OnExit,
    pub priority: u32,
}

impl Election {
    /// This election's timings: the process's TTL, its own stop grace.
    pub fn timing(&self, ttl: Duration) -> Timing {
        Timing::new(ttl, self.stop_grace)
    }
}

/// Read the `elections` value of a config file: an array of tables with known keys.
pub fn read(path: &Path, value: &toml::Value) -> Result<Vec<Table>, ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let toml::Value::Array(items) = value else {
        return Err(err(
            "`elections` must be a list of tables: write each as [[elections]] with its `name`"
                .into(),
        ));
    };
    let mut tables = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let number = i + 1;
        let toml::Value::Table(t) = item else {
            return Err(err(format!(
                "[[elections]] #{number} must be a table (keys: {})",
                TABLE_KEYS.join(", ")
            )));
        };
        let mut table = Table {
            number,
            ..Table::default()
        };
        for (k, v) in t {
            let Some(key) = TABLE_KEYS.iter().find(|t| **t == k.as_str()) else {
                return Err(err(format!(
                    "[[elections]] #{number}: unknown key `{k}`; known keys: {}",
                    TABLE_KEYS.join(", ")
                )));
            };
            if *key == "command" {
                let toml::Value::Array(argv) = v else {
                    return Err(err(format!(
                        "[[elections]] #{number}: `command` must be an array of strings: the \
                         program and its arguments, e.g. command = [\"./consumer\", \"--partition\", \"0\"]"
                    )));
                };
                let argv: Option<Vec<String>> = argv
                    .iter()
                    .map(|a| a.as_str().map(str::to_string))
                    .collect();
                match argv {
                    Some(a) if !a.is_empty() && !a[0].is_empty() => table.command = Some(a),
                    _ => {
                        return Err(err(format!(
                            "[[elections]] #{number}: `command` must be a non-empty array of \
                             strings, the program first"
                        )));
                    }
                }
                continue;
            }
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                _ => {
                    return Err(err(format!(
                        "[[elections]] #{number}: `{key}` must be a string or a number"
                    )));
                }
            };
            table.values.insert(key, text);
        }
        tables.push(table);
    }
    Ok(tables)
}

/// Resolve the tables: each value parsed, the top-level values as defaults; names unique.
pub fn resolve(
    path: &Path,
    tables: &[Table],
    defaults: &Election,
) -> Result<Vec<Election>, ConfigError> {
    let mut out: Vec<Election> = Vec::new();
    for t in tables {
        let origin = |key: &'static str| Origin::Table {
            path: PathBuf::from(path),
            number: t.number,
            key,
        };
        let get = |key: &'static str| t.values.get(key).map(String::as_str);
        let invalid = |key: &'static str, value: &str, expected: String| ConfigError::Invalid {
            field: key,
            value: value.to_string(),
            origin: origin(key),
            expected,
        };
        let name = match get("name") {
            Some(n) => parse::election(n).map_err(|e| invalid("name", n, e))?,
            None => {
                return Err(ConfigError::Inconsistent(format!(
                    "[[elections]] #{} in {} has no `name`: give every election its etcd key \
                     prefix, e.g. name = \"shard-0\"",
                    t.number,
                    path.display()
                )));
            }
        };
        if let Some(other) = out.iter().find(|e| e.name == name) {
            return Err(ConfigError::Inconsistent(format!(
                "election {:?} is declared twice in {} ([[elections]] #{}): each election once",
                other.name,
                path.display(),
                t.number
            )));
        }
        let stop_grace = match get("stop_grace") {
            Some(v) => parse::duration(v).map_err(|e| invalid("stop_grace", v, e))?,
            None => defaults.stop_grace,
        };
        let on_exit = match get("on_exit") {
            Some(v) => parse::on_exit(v).map_err(|e| invalid("on_exit", v, e))?,
            None => defaults.on_exit,
        };
        let priority = match get("priority") {
            Some(v) => parse::number_between(0, 1000)(v).map_err(|e| invalid("priority", v, e))?,
            None => defaults.priority,
        };
        out.push(Election {
            name,
            command: t.command.clone().unwrap_or_default(),
            stop_grace,
            on_exit,
            priority,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(text: &str) -> Result<Vec<Table>, ConfigError> {
        let v: toml::Table = toml::from_str(text).unwrap();
        read(Path::new("e.toml"), &v["elections"])
    }

    fn defaults() -> Election {
        Election {
            name: String::new(),
            command: Vec::new(),
            stop_grace: Duration::from_secs(3),
            on_exit: OnExit::Restart,
            priority: 1,
        }
    }

    #[test]
    fn tables_resolve_with_the_top_level_as_defaults() {
        let t = tables(
            r#"
            [[elections]]
            name = "shard-0"
            command = ["./consumer", "--partition", "0"]
            stop_grace = "1s"
            [[elections]]
            name = "shard-1"
            priority = 0
            on_exit = "resign"
            "#,
        )
        .unwrap();
        let e = resolve(Path::new("e.toml"), &t, &defaults()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].command, ["./consumer", "--partition", "0"]);
        assert_eq!(e[0].stop_grace, Duration::from_secs(1));
        assert_eq!(e[0].on_exit, OnExit::Restart);
        assert_eq!(e[1].command, Vec::<String>::new());
        assert_eq!((e[1].priority, e[1].on_exit), (0, OnExit::Resign));
        assert_eq!(e[1].stop_grace, Duration::from_secs(3));
    }

    /// Every mistake is named by its table and key, with what would be accepted.
    #[test]
    fn errors_name_the_table_and_the_key() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str])] = &[
            ("elections = 3", &["list of tables"]),
            ("elections = [1]", &["#1", "table"]),
            ("[[elections]]\nname = \"a\"\ncolour = \"red\"", &["#1", "unknown key `colour`", "known keys"]),
            ("[[elections]]\nname = \"a\"\ncommand = \"./x\"", &["`command` must be an array"]),
            ("[[elections]]\nname = \"a\"\ncommand = []", &["non-empty"]),
            ("[[elections]]\nname = \"a\"\n[[elections]]\nname = \"b\"\nstop_grace = \"soon\"", &["stop_grace", "soon", "#2", "duration"]),
            ("[[elections]]\nname = \"a\"\non_exit = \"later\"", &["on_exit", "later", "#1"]),
            ("[[elections]]\nname = \"a\"\npriority = 5000", &["priority", "5000", "#1"]),
            ("[[elections]]\ncommand = [\"x\"]", &["#1", "no `name`"]),
            ("[[elections]]\nname = \"a\"\n[[elections]]\nname = \"a\"", &["declared twice", "#2"]),
            ("[[elections]]\nname = \"a b\"", &["name", "a b", "#1"]),
        ];
        for (text, needles) in cases {
            let e = match tables(text) {
                Err(e) => e.to_string(),
                Ok(t) => resolve(Path::new("e.toml"), &t, &defaults())
                    .expect_err(text)
                    .to_string(),
            };
            for n in *needles {
                assert!(e.contains(n), "{text}: {e} lacks {n:?}");
            }
        }
    }
}
