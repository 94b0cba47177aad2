//! Human-readable tables and JSON lines for reports.

use serde_json::{Map, Value};

/// Rows of named figures; printed as an aligned table or as one JSON object per line.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Map<String, Value>>,
}

impl Report {
    pub fn push(&mut self, row: Value) {
        if let Value::Object(m) = row {
            self.rows.push(m);
        }
    }

    /// Print one row at once (JSON lines are streamed as they are measured).
    pub fn emit(&mut self, row: Value, json: bool) {
        if json {
            println!("{row}");
        }
        self.push(row);
    }

    /// Print the aligned table of all rows (skipped in JSON mode, which printed already).
    pub fn print_table(&self, title: &str) {
        if self.rows.is_empty() {
            return;
        }
        let mut columns: Vec<String> = Vec::new();
        let mut cells: Vec<Vec<String>> = Vec::new();
        for row in &self.rows {
            for (k, v) in row {
                flatten(k, v, &mut |name, _| {
                    if !columns.iter().any(|c| c == name) {
                        columns.push(name.to_string());
                    }
                });
            }
        }
        for row in &self.rows {
            let mut line = vec![String::new(); columns.len()];
            for (k, v) in row {
                flatten(k, v, &mut |name, text| {
                    if let Some(i) = columns.iter().position(|c| c == name) {
                        line[i] = text;
                    }
                });
            }
            cells.push(line);
        }
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| cells.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
            .collect();
        println!("{title}");
        let header: Vec<String> = columns.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        println!("  {}", header.join("  "));
        for line in cells {
            let l: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
            println!("  {}", l.join("  "));
        }
        println!();
    }
}

/// One run's figures as `name value` lines, nested names joined with dots (a summary
/// with more figures than a table row can show).
pub fn print_figures(title: &str, figures: &Value) {
    let rows = flatten_figures(figures);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("{title}");
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
    println!();
}

/// `(dotted.name, text)` of every figure in an object, in its order. Numbers keep the
/// digits their producer rounded them to (a continuity index of 0.9995 must not read 1.000).
pub fn flatten_figures(figures: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(&format!("{prefix}.{k}"), v, rows)),
            Value::String(s) => rows.push((prefix.to_string(), s.clone())),
            Value::Array(a) => {
                let items: Vec<String> =
                    a.iter().map(|x| x.as_str().map_or(x.to_string(), str::to_string)).collect();
                rows.push((prefix.to_string(), items.join("; ")));
            }
            other => rows.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    if let Value::Object(m) = figures {
        m.iter().for_each(|(k, v)| walk(k, v, &mut rows));
    }
    rows
}

fn flatten(prefix: &str, v: &Value, f: &mut dyn FnMut(&str, String)) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}.{k}"), v, f);
            }
        }
        Value::Number(n) => {
            let text = match n.as_f64() {
                Some(x) if n.is_f64() => format_float(x),
                _ => n.to_string(),
            };
            f(prefix, text)
        }
        Value::String(s) => f(prefix, s.clone()),
        other => f(prefix, other.to_string()),
    }
}

/// A figure for a table cell: whole numbers from 100 up, two decimals from 1, else three.
pub fn format_float(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Round for JSON output so lines stay readable (figures, not noise).
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_nested_figures() {
        let mut names = Vec::new();
        flatten("standing_queue_ms", &json!({"p50": 1.5, "p95": 20.0}), &mut |n, t| {
            names.push((n.to_string(), t))
        });
        assert_eq!(
            names,
            vec![
                ("standing_queue_ms.p50".into(), "1.50".into()),
                ("standing_queue_ms.p95".into(), "20.00".into())
            ]
        );
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
