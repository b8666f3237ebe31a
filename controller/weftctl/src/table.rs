//! Plain-text tables with aligned columns, the way `kubectl get` prints them.

/// `headers` and `rows` as left-aligned columns separated by two spaces; the last
/// column is not padded. Rows may be shorter or longer than the header.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count();
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["backend-0".to_owned(), "backend".to_owned(), "x".to_owned()],
            vec!["web-0".to_owned(), "frontend".to_owned(), "yy".to_owned()],
        ];
        assert_eq!(
            render(&["POD", "SERVICE", "Z"], &rows),
            "POD        SERVICE   Z\n\
             backend-0  backend   x\n\
             web-0      frontend  yy\n"
        );
    }

    #[test]
    fn ragged_rows() {
        let rows = vec![vec!["a".to_owned(), "bbb".to_owned(), "c".to_owned()]];
        assert_eq!(render(&["X"], &rows), "X\na  bbb  c\n");
    }

    #[test]
    fn headers_only() {
        assert_eq!(render(&["A", "B"], &[]), "A  B\n");
    }
}
