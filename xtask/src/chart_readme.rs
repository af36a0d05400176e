//! `charts/kratos-operator/README.md`, generated from the chart's `values.yaml` (keys, defaults
//! and descriptions) and `values.schema.json` (types) by `cargo xtask generate`; `tests/chart.rs`
//! includes this file and fails when the README differs from what it generates.
//!
//! The comment convention of `values.yaml` (the one of helm-docs):
//!
//! - `# -- text` right above a key documents that key; the `#` lines after it, up to the key,
//!   continue the text. The key is one row of the table, with its whole value as the default.
//! - The keys below a documented key belong to its row and carry no `# --` of their own.
//! - A key without `# --` is a section: a mapping whose keys are each documented (or sections).
//! - Other comments (no `--`) are free text and not copied.
//!
//! Every documented key must be in `values.schema.json`, which gives the row's type.

use serde_json::Value;

/// The README's first line.
pub const HEADER: &str = "<!-- Generated from values.yaml, values.schema.json and Chart.yaml by `cargo xtask generate`; do not edit. -->";

/// One documented value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Dotted path, e.g. `kratos.tokenSecret`.
    pub key: String,
    /// Type from the schema.
    pub ty: String,
    /// The default, as compact JSON.
    pub default: String,
    /// The `# --` comment.
    pub description: String,
}

/// A key line of values.yaml: its indentation, name and whether a value follows on the line.
fn key_line(line: &str) -> Option<(usize, &str, bool)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = &line[indent..];
    let (name, after) = rest.split_once(':')?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !is_name || !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    let value = after.split(" #").next().unwrap_or("").trim();
    Some((indent, name, !value.is_empty()))
}

struct Open {
    indent: usize,
    key: String,
    documented: bool,
    children: usize,
    line: usize,
}

/// The documented keys of `values_yaml`, in file order, with their descriptions (types and
/// defaults empty).
pub fn documented_keys(values_yaml: &str) -> Result<Vec<(String, String)>, String> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut pending: Option<(usize, usize, Vec<String>)> = None;
    let close = |stack: &mut Vec<Open>, upto: usize| -> Result<(), String> {
        while stack.last().is_some_and(|o| o.indent >= upto) {
            if let Some(o) = stack.pop()
                && !o.documented
                && o.children == 0
            {
                return Err(format!(
                    "values.yaml:{}: `{}` has no `# --` comment and no documented keys",
                    o.line, o.key
                ));
            }
        }
        Ok(())
    };
    for (i, line) in values_yaml.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        let indent = line.len() - line.trim_start().len();
        if trimmed.is_empty() {
            if let Some((at, _, _)) = pending {
                return Err(format!(
                    "values.yaml:{at}: a `# --` comment must be right above its key"
                ));
            }
            continue;
        }
        if let Some(text) = trimmed.strip_prefix("# --") {
            if let Some((at, _, _)) = pending {
                return Err(format!(
                    "values.yaml:{n}: a second `# --` comment before the key of line {at}'s"
                ));
            }
            pending = Some((n, indent, vec![text.trim().to_string()]));
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some((_, _, lines)) = pending.as_mut() {
                lines.push(text.trim().to_string());
            }
            continue;
        }
        let Some((indent, name, inline_value)) = key_line(line) else {
            // A list item or a continuation: part of the value of a documented key.
            if let Some((at, _, _)) = pending {
                return Err(format!(
                    "values.yaml:{at}: the `# --` comment is not followed by a key"
                ));
            }
            if !stack.iter().any(|o| o.documented) {
                return Err(format!(
                    "values.yaml:{n}: a value outside any documented key: {trimmed}"
                ));
            }
            continue;
        };
        close(&mut stack, indent)?;
        if stack.iter().any(|o| o.documented) {
            // Inside a documented key's value.
            if let Some((at, _, _)) = pending {
                return Err(format!(
                    "values.yaml:{at}: `{name}` is inside a documented key; document that key only"
                ));
            }
            continue;
        }
        let path: Vec<&str> = stack.iter().map(|o| o.key.as_str()).chain([name]).collect();
        let key = path.join(".");
        if let Some(parent) = stack.last_mut() {
            parent.children += 1;
        }
        match pending.take() {
            Some((at, doc_indent, lines)) => {
                if doc_indent != indent {
                    return Err(format!(
                        "values.yaml:{at}: the `# --` comment of `{key}` is not indented like it"
                    ));
                }
                let description = lines
                    .iter()
                    .filter(|l| !l.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                if description.is_empty() {
                    return Err(format!(
                        "values.yaml:{at}: `{key}` has an empty `# --` comment"
                    ));
                }
                rows.push((key.clone(), description));
                stack.push(Open {
                    indent,
                    key: name.to_string(),
                    documented: true,
                    children: 0,
                    line: n,
                });
            }
            None if inline_value => {
                return Err(format!(
                    "values.yaml:{n}: `{key}` has no `# --` comment above it"
                ));
            }
            None => stack.push(Open {
                indent,
                key: name.to_string(),
                documented: false,
                children: 0,
                line: n,
            }),
        }
    }
    if let Some((at, _, _)) = pending {
        return Err(format!(
            "values.yaml:{at}: the `# --` comment is not followed by a key"
        ));
    }
    close(&mut stack, 0)?;
    Ok(rows)
}

/// Follows a `$ref` to `#/definitions/...`.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> Result<&'a Value, String> {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/definitions/")
                .ok_or_else(|| format!("unsupported $ref {reference}"))?;
            let target = schema
                .get("definitions")
                .and_then(|d| d.get(name))
                .ok_or_else(|| format!("$ref {reference} names no definition"))?;
            resolve(schema, target)
        }
        None => Ok(node),
    }
}

/// The type of a schema node, in words: `string`, `integer or null`, `list of string`, ...
fn type_of(schema: &Value, node: &Value) -> Result<String, String> {
    let node = resolve(schema, node)?;
    let mut types: Vec<String> = Vec::new();
    match node.get("type") {
        Some(Value::String(t)) => types.push(t.clone()),
        Some(Value::Array(ts)) => {
            types.extend(ts.iter().filter_map(Value::as_str).map(String::from))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for member in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let t = match member.get("const") {
                Some(Value::String(_)) => "string".to_string(),
                _ => type_of(schema, member)?,
            };
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err(format!("no type in {node}"));
    }
    let mut words: Vec<String> = Vec::new();
    for t in types {
        let t = match (t.as_str(), node.get("items")) {
            ("array", Some(items)) => format!("list of {}", type_of(schema, items)?),
            _ => t,
        };
        if !words.contains(&t) {
            words.push(t);
        }
    }
    let mut out = words.join(" or ");
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(Value::to_string).collect();
        out = format!("{out} (one of {})", values.join(", "));
    }
    Ok(out)
}

/// The schema node of a dotted key.
fn schema_node<'a>(schema: &'a Value, key: &str) -> Result<&'a Value, String> {
    let mut node = schema;
    for part in key.split('.') {
        node = resolve(schema, node)?
            .get("properties")
            .and_then(|p| p.get(part))
            .ok_or_else(|| format!("`{key}` is not in values.schema.json"))?;
    }
    Ok(node)
}

/// The table's rows: documented keys with their types and defaults.
pub fn rows(values_yaml: &str, schema: &Value) -> Result<Vec<Row>, String> {
    let values: Value =
        yaml_serde::from_str(values_yaml).map_err(|e| format!("values.yaml: {e}"))?;
    documented_keys(values_yaml)?
        .into_iter()
        .map(|(key, description)| {
            let mut default = &values;
            for part in key.split('.') {
                default = default
                    .get(part)
                    .ok_or_else(|| format!("`{key}` has no value in values.yaml"))?;
            }
            let ty = type_of(schema, schema_node(schema, &key)?)
                .map_err(|e| format!("the schema of `{key}`: {e}"))?;
            Ok(Row {
                key,
                ty,
                default: default.to_string(),
                description,
            })
        })
        .collect()
}

/// A table cell: `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A table cell of prose: `|` escaped, and `<`, `>` and `&` as entities so that a placeholder
/// such as `<project>` is not taken for HTML (backtick spans keep them as they are).
fn prose(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 {
            out.push_str(part);
        } else {
            out.push_str(
                &part
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;"),
            );
        }
    }
    cell(&out)
}

/// Inline code, in a span that backticks in the text cannot end.
fn code(text: &str) -> String {
    let fence = if text.contains('`') { "``" } else { "`" };
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", cell(text))
}

/// The README of the chart.
pub fn readme(values_yaml: &str, schema_json: &str, chart_yaml: &str) -> Result<String, String> {
    let schema: Value =
        serde_json::from_str(schema_json).map_err(|e| format!("values.schema.json: {e}"))?;
    let chart: Value = yaml_serde::from_str(chart_yaml).map_err(|e| format!("Chart.yaml: {e}"))?;
    let field = |name: &str| -> Result<String, String> {
        chart
            .get(name)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| format!("Chart.yaml has no {name}"))
    };
    let (name, description) = (field("name")?, field("description")?);
    let (version, app_version) = (field("version")?, field("appVersion")?);
    let mut out = format!(
        "{HEADER}\n\n# {name}\n\n{description}\n\nChart version {version}, operator version {app_version}.\n\n\
## Install\n\n\
```sh\n\
helm install {name} charts/{name} \\\n  --namespace {name} --create-namespace \\\n  \
--set kratos.adminUrl=http://kratos-admin.kratos.svc.cluster.local:4434 \\\n  \
--set kratos.publicUrl=http://kratos-public.kratos.svc.cluster.local:4433\n\
```\n\n\
`kratos.adminUrl` is the one required value. The repository's README covers rollouts, upgrading \
the CRDs and uninstalling.\n\n\
## Values\n\n\
`values.schema.json` checks every value; unknown keys are refused. Defaults are shown as JSON.\n\n\
| Key | Type | Default | Description |\n\
|-----|------|---------|-------------|\n"
    );
    for row in rows(values_yaml, &schema)? {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            code(&row.key),
            cell(&row.ty),
            code(&row.default),
            prose(&row.description)
        ));
    }
    out.push_str(
        "\n## Documenting a value\n\n\
This file is generated by `cargo xtask generate` from `values.yaml` and `values.schema.json`; \
`tests/chart.rs` fails when it is stale. In `values.yaml`, a `# -- ` comment right above a key \
documents it (the `#` lines after it continue the text) and makes it one row, with its whole value \
as the default; a key without one is a section whose keys are each documented. Every documented \
key needs its type in `values.schema.json`.\n",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_keys_sections_and_subtrees() {
        let yaml = "\
# Free text.

a:
  # -- First line
  # second line.
  b: 1
  # -- A map, one row.
  c:
    d: x
    e:
      - f: 1
        g: 2
# -- Top.
h: []
";
        assert_eq!(
            documented_keys(yaml).unwrap(),
            [
                ("a.b".to_string(), "First line second line.".to_string()),
                ("a.c".to_string(), "A map, one row.".to_string()),
                ("h".to_string(), "Top.".to_string()),
            ]
        );
    }

    #[test]
    fn undocumented_and_misplaced_comments_are_errors() {
        for (yaml, needle) in [
            ("a: 1\n", "`a` has no `# --` comment"),
            (
                "s:\n  # -- ok\n  a: 1\n  b: 2\n",
                "`s.b` has no `# --` comment",
            ),
            ("# -- doc\n\na: 1\n", "right above its key"),
            ("# -- doc\n- x\n", "not followed by a key"),
            (
                "# -- doc\na:\n  # -- inner\n  b: 1\n",
                "inside a documented key",
            ),
            ("s:\n", "no documented keys"),
            ("# -- \na: 1\n", "empty"),
            ("# -- one\n# -- two\na: 1\n", "second"),
        ] {
            let err = documented_keys(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn types_come_from_the_schema_and_defaults_from_the_values() {
        let schema: Value = serde_json::json!({
            "definitions": { "d": { "type": "string", "pattern": "^x" } },
            "properties": {
                "a": { "properties": { "b": { "$ref": "#/definitions/d" } } },
                "l": { "type": "array", "items": { "type": "string" } },
                "p": { "type": ["integer", "null"] },
                "t": { "anyOf": [{ "const": "" }, { "$ref": "#/definitions/d" }] },
                "e": { "type": "string", "enum": ["json", "text"] },
            }
        });
        let yaml = "a:\n  # -- B.\n  b: x\n# -- L.\nl: [\"--v\"]\n# -- P.\np: 3\n# -- T.\nt: \"\"\n# -- E.\ne: json\n";
        let rows = rows(yaml, &schema).unwrap();
        let got: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.ty.as_str(), r.default.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("a.b", "string", "\"x\""),
                ("l", "list of string", "[\"--v\"]"),
                ("p", "integer or null", "3"),
                ("t", "string", "\"\""),
                ("e", "string (one of \"json\", \"text\")", "\"json\""),
            ]
        );
        let err = super::rows("# -- Z.\nz: 1\n", &schema).unwrap_err();
        assert!(err.contains("`z` is not in values.schema.json"), "{err}");
    }

    #[test]
    fn cells_escape_pipes_and_backticks() {
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("`x`"), "`` `x` ``");
        assert_eq!(cell("x | y"), "x \\| y");
        assert_eq!(
            prose("https://<project>.example & `a<b>` > 1"),
            "https://&lt;project&gt;.example &amp; `a<b>` &gt; 1"
        );
    }
}
