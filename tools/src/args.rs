//! A small, strict `--flag value` parser: unknown, repeated or valueless flags are errors.

use std::collections::BTreeMap;

pub struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    pub fn parse(argv: &[String], allowed: &[&str]) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut i = 0;
        while i < argv.len() {
            let a = &argv[i];
            let Some(flag) = a.strip_prefix("--") else {
                return Err(format!(
                    "unexpected argument `{a}` (flags are --name value)"
                ));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = argv
                        .get(i + 1)
                        .ok_or_else(|| format!("--{flag} needs a value"))?;
                    i += 1;
                    (flag.to_string(), v.clone())
                }
            };
            if !allowed.contains(&name.as_str()) {
                let list = allowed
                    .iter()
                    .map(|f| format!("--{f}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(if list.is_empty() {
                    format!("unknown flag --{name} (this command takes none)")
                } else {
                    format!("unknown flag --{name} (expected one of {list})")
                });
            }
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
            i += 1;
        }
        Ok(Args { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("missing required flag --{name}"))
    }
}
