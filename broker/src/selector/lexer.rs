//! Splits a selector into tokens, each with its 1-based column (in characters), so the
//! parser can say where a selector went wrong. No evaluation, no allocation past the
//! token list and the text of string literals.

use super::SelectorError;

/// Keywords (case-insensitive, as JMS has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyword {
    And,
    Or,
    Not,
    Between,
    In,
    Like,
    Escape,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    fn of(word: &str) -> Option<Keyword> {
        const ALL: [(&str, Keyword); 11] = [
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("NOT", Keyword::Not),
            ("BETWEEN", Keyword::Between),
            ("IN", Keyword::In),
            ("LIKE", Keyword::Like),
            ("ESCAPE", Keyword::Escape),
            ("IS", Keyword::Is),
            ("NULL", Keyword::Null),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
        ];
        ALL.iter().find(|(k, _)| k.eq_ignore_ascii_case(word)).map(|(_, kw)| *kw)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok<'s> {
    Ident(&'s str),
    Str(String),
    Int(i64),
    Float(f64),
    Kw(Keyword),
    /// `=`, `<>`, `<`, `>`, `<=`, `>=`, `+`, `-`, `*`, `/`
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token<'s> {
    pub tok: Tok<'s>,
    /// 1-based column of the token's first character.
    pub pos: usize,
    /// The token as written (empty at the end).
    pub text: &'s str,
}

/// Every token of `text`, ending with [`Tok::End`] (at the column past the last character).
pub(super) fn tokens(text: &str) -> Result<Vec<Token<'_>>, SelectorError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut col = 0;
    // Columns are counted in characters; `col` is that of the character last taken.
    while let Some((start, c)) = chars.next() {
        col += 1;
        let pos = col;
        if c.is_whitespace() {
            continue;
        }
        let mut end = start + c.len_utf8();
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Op("="),
            '+' => Tok::Op("+"),
            '-' => Tok::Op("-"),
            '*' => Tok::Op("*"),
            '/' => Tok::Op("/"),
            '<' | '>' => {
                let two = match (c, chars.peek().map(|(_, n)| *n)) {
                    ('<', Some('>')) => Some("<>"),
                    ('<', Some('=')) => Some("<="),
                    ('>', Some('=')) => Some(">="),
                    _ => None,
                };
                match two {
                    Some(op) => {
                        chars.next();
                        col += 1;
                        end += 1;
                        Tok::Op(op)
                    }
                    None if c == '<' => Tok::Op("<"),
                    None => Tok::Op(">"),
                }
            }
            '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(SelectorError::at(pos, "string literal is not closed (a quote inside is written '')")),
                        Some((i, '\'')) => {
                            col += 1;
                            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                                chars.next();
                                col += 1;
                                value.push('\'');
                            } else {
                                end = i + 1;
                                break;
                            }
                        }
                        Some((_, other)) => {
                            col += 1;
                            value.push(other);
                        }
                    }
                }
                Tok::Str(value)
            }
            c if c.is_ascii_digit() || (c == '.' && chars.peek().is_some_and(|(_, n)| n.is_ascii_digit())) => {
                end = number_end(text, start);
                col += text[start + 1..end].chars().count();
                while chars.peek().is_some_and(|(i, _)| *i < end) {
                    chars.next();
                }
                number(&text[start..end], pos)?
            }
            c if is_ident_start(c) => {
                while let Some((i, n)) = chars.peek().copied() {
                    if !is_ident_part(n) {
                        break;
                    }
                    chars.next();
                    col += 1;
                    end = i + n.len_utf8();
                }
                let word = &text[start..end];
                Keyword::of(word).map_or(Tok::Ident(word), Tok::Kw)
            }
            other => return Err(SelectorError::at(pos, format!("unexpected character {other:?}"))),
        };
        out.push(Token { tok, pos, text: &text[start..end] });
    }
    out.push(Token { tok: Tok::End, pos: col + 1, text: "" });
    Ok(out)
}

/// Java identifier characters, plus `.` inside a name (as ActiveMQ allows).
fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == '.'
}

/// Where the numeric literal starting at byte `start` ends: digits, one `.`, and an
/// exponent (`e`/`E`, optional sign, digits) when digits follow it.
fn number_end(text: &str, start: usize) -> usize {
    let b = text.as_bytes();
    let mut i = start;
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    i = digits(i);
    if i < b.len() && b[i] == b'.' {
        i = digits(i + 1);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = digits(j);
        }
    }
    i
}

fn number(literal: &str, pos: usize) -> Result<Tok<'static>, SelectorError> {
    if !literal.contains(['.', 'e', 'E']) {
        return literal
            .parse::<i64>()
            .map(Tok::Int)
            .map_err(|_| SelectorError::at(pos, format!("integer {literal} is out of range (at most {})", i64::MAX)));
    }
    match literal.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
        _ => Err(SelectorError::at(pos, format!("number {literal} is out of range"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<(Tok<'_>, usize)> {
        tokens(text).unwrap().into_iter().map(|t| (t.tok, t.pos)).collect()
    }

    #[test]
    fn given_operators_and_literals_should_give_tokens_with_columns() {
        assert_eq!(
            toks("a<>'it''s' AND b>=1.5e2"),
            vec![
                (Tok::Ident("a"), 1),
                (Tok::Op("<>"), 2),
                (Tok::Str("it's".into()), 4),
                (Tok::Kw(Keyword::And), 12),
                (Tok::Ident("b"), 16),
                (Tok::Op(">="), 17),
                (Tok::Float(150.0), 19),
                (Tok::End, 24),
            ]
        );
    }

    #[test]
    fn given_keywords_in_any_case_should_be_keywords_and_identifiers_kept_as_written() {
        assert_eq!(
            toks("nOt Region is NULL"),
            vec![(Tok::Kw(Keyword::Not), 1), (Tok::Ident("Region"), 5), (Tok::Kw(Keyword::Is), 12), (Tok::Kw(Keyword::Null), 15), (Tok::End, 19)]
        );
    }

    #[test]
    fn given_numbers_should_tell_integers_from_decimals() {
        assert_eq!(toks("7 .5 3. 2E3 1e-2")[..5].iter().map(|t| t.0.clone()).collect::<Vec<_>>(), vec![
            Tok::Int(7),
            Tok::Float(0.5),
            Tok::Float(3.0),
            Tok::Float(2000.0),
            Tok::Float(0.01)
        ]);
    }

    #[test]
    fn given_multibyte_text_should_count_columns_in_characters() {
        assert_eq!(toks("'é' = x"), vec![(Tok::Str("é".into()), 1), (Tok::Op("="), 5), (Tok::Ident("x"), 7), (Tok::End, 8)]);
    }

    #[test]
    fn given_unclosed_string_or_stray_character_should_name_the_column() {
        assert_eq!(tokens("a = 'x").unwrap_err().to_string(), "selector error at position 5: string literal is not closed (a quote inside is written '')");
        assert_eq!(tokens("a # 1").unwrap_err().to_string(), "selector error at position 3: unexpected character '#'");
        assert!(tokens("a = 99999999999999999999").unwrap_err().to_string().starts_with("selector error at position 5: integer"));
    }
}
