//! Turns a selector's tokens into an expression tree, once per subscription: operator
//! precedence (OR < AND < NOT < comparisons < `+ -` < `* /` < unary minus), JMS names
//! mapped to STOMP headers, LIKE patterns compiled. Every error names the column where
//! the selector stopped making sense and what was expected there.

use super::lexer::{tokens, Keyword, Tok, Token};
use super::SelectorError;

/// How deep parentheses, NOT, unary signs and arithmetic operators may nest: bounds the
/// recursion of parsing and of every evaluation (a header may be 64KiB of `((((`).
pub(super) const MAX_DEPTH: usize = 100;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Lit(Lit),
    Field(Field),
    Neg(Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    Between { value: Box<Expr>, low: Box<Expr>, high: Box<Expr>, not: bool },
    In { value: Box<Expr>, list: Vec<Lit>, not: bool },
    Like { value: Box<Expr>, pattern: Vec<LikePart>, not: bool },
    IsNull { value: Box<Expr>, not: bool },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lit {
    Str(Box<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// What an identifier reads from a message.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Field {
    /// A STOMP header.
    Header(Box<str>),
    /// `JMSMessageID`: the `message-id` the broker gives the message.
    MessageId,
    /// `JMSPriority`: the message's priority as the broker reads it (`priority`, 0 to 9, 4
    /// when absent).
    Priority,
    /// `JMSExpiration`: when the message expires (`expires`, 0 for never).
    Expiration,
    /// `JMSDeliveryMode`: `'PERSISTENT'` or `'NON_PERSISTENT'`.
    DeliveryMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// A LIKE pattern, escapes resolved: a literal character, `_` or `%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LikePart {
    Char(char),
    One,
    Many,
}

impl Expr {
    /// Whether this is true, false or unknown rather than a value; identifiers and
    /// TRUE/FALSE may be either.
    fn is_condition(&self) -> bool {
        !matches!(self, Expr::Lit(Lit::Str(_) | Lit::Int(_) | Lit::Float(_)) | Expr::Neg(_) | Expr::Arith(..))
    }

    fn is_value(&self) -> bool {
        matches!(self, Expr::Lit(_) | Expr::Field(_) | Expr::Neg(_) | Expr::Arith(..))
    }

    /// What this is, for an error message.
    fn kind(&self) -> &'static str {
        match self {
            Expr::Lit(Lit::Str(_)) => "a string",
            Expr::Lit(Lit::Int(_) | Lit::Float(_)) | Expr::Neg(_) | Expr::Arith(..) => "a number",
            Expr::Lit(Lit::Bool(_)) => "TRUE or FALSE",
            Expr::Field(_) => "an identifier",
            _ => "a condition",
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Expr::Lit(Lit::Int(_) | Lit::Float(_)) | Expr::Field(_) | Expr::Neg(_) | Expr::Arith(..))
    }
}

/// What an operand must be.
#[derive(Clone, Copy)]
enum Want {
    Condition,
    Value,
    Number,
}

impl Want {
    fn noun(self) -> &'static str {
        match self {
            Want::Condition => "a condition",
            Want::Value => "a value",
            Want::Number => "a number",
        }
    }

    fn accepts(self, e: &Expr) -> bool {
        match self {
            Want::Condition => e.is_condition(),
            Want::Value => e.is_value(),
            Want::Number => e.is_number(),
        }
    }
}

/// Parses a whole selector.
pub(super) fn parse(text: &str) -> Result<Expr, SelectorError> {
    let mut p = Parser { tokens: tokens(text)?, at: 0, depth: 0 };
    if p.peek().tok == Tok::End {
        return Err(SelectorError::at(1, "the selector is empty; expected a condition such as region = 'eu'"));
    }
    let root = p.operand("", Want::Condition, Parser::or)?;
    let end = p.peek();
    if end.tok != Tok::End {
        return Err(SelectorError::at(end.pos, format!("expected AND, OR or the end of the selector, found {}", describe(end))));
    }
    Ok(root)
}

fn describe(t: &Token) -> String {
    match t.tok {
        Tok::End => "the end of the selector".to_string(),
        _ => format!("'{}'", t.text),
    }
}

/// What a JMS name stands for; any other name is a header.
fn field(name: &str) -> Field {
    let header = |name: &str| Field::Header(Box::from(name));
    match name {
        "JMSPriority" => Field::Priority,
        "JMSMessageID" => Field::MessageId,
        "JMSCorrelationID" => header("correlation-id"),
        "JMSType" => header("type"),
        "JMSTimestamp" => header("timestamp"),
        "JMSExpiration" => Field::Expiration,
        "JMSDeliveryMode" => Field::DeliveryMode,
        other => header(other),
    }
}

type Parsed = Result<Expr, SelectorError>;

struct Parser<'s> {
    tokens: Vec<Token<'s>>,
    at: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Token<'s> {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token<'s> {
        let t = self.peek().clone();
        if t.tok != Tok::End {
            self.at += 1;
        }
        t
    }

    fn eat_kw(&mut self, kw: Keyword) -> bool {
        let found = self.peek().tok == Tok::Kw(kw);
        if found {
            self.at += 1;
        }
        found
    }

    /// One more level of nesting at `pos`; refused past [`MAX_DEPTH`].
    fn enter(&mut self, pos: usize) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SelectorError::at(pos, format!("the selector nests deeper than {MAX_DEPTH} levels (parentheses, NOT, signs, arithmetic)")));
        }
        Ok(())
    }

    /// Parses what follows `after` (an operator or keyword, quoted) with `parse`, and
    /// checks it is what `want` says.
    fn operand(&mut self, after: &str, want: Want, parse: fn(&mut Self) -> Parsed) -> Parsed {
        let start = self.peek();
        let pos = start.pos;
        let after = if after.is_empty() { String::new() } else { format!(" after {after}") };
        let can_start = match start.tok {
            Tok::Ident(_) | Tok::Str(_) | Tok::Int(_) | Tok::Float(_) | Tok::LParen => true,
            Tok::Kw(Keyword::True | Keyword::False) => true,
            Tok::Kw(Keyword::Not) => matches!(want, Want::Condition),
            Tok::Op("-" | "+") => true,
            _ => false,
        };
        if !can_start {
            return Err(SelectorError::at(pos, format!("expected {}{after}, found {}", want.noun(), describe(start))));
        }
        let e = parse(self)?;
        if !want.accepts(&e) {
            return Err(SelectorError::at(pos, format!("expected {}{after}, found {}", want.noun(), e.kind())));
        }
        Ok(e)
    }

    fn or(&mut self) -> Parsed {
        self.chain(Keyword::Or, "'OR'", Parser::and, Expr::Or)
    }

    fn and(&mut self) -> Parsed {
        self.chain(Keyword::And, "'AND'", Parser::not, Expr::And)
    }

    /// Conditions `item` parses joined by `keyword` (spelled `after` in errors), flat: a
    /// long chain is one node, not a deep tree.
    fn chain(&mut self, keyword: Keyword, after: &str, item: fn(&mut Self) -> Parsed, make: fn(Vec<Expr>) -> Expr) -> Parsed {
        let first = item(self)?;
        if self.peek().tok != Tok::Kw(keyword) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_kw(keyword) {
            items.push(self.operand(after, Want::Condition, item)?);
        }
        Ok(make(items))
    }

    fn not(&mut self) -> Parsed {
        let pos = self.peek().pos;
        if !self.eat_kw(Keyword::Not) {
            return self.predicate();
        }
        let saved = self.depth;
        self.enter(pos)?;
        let e = self.operand("'NOT'", Want::Condition, Parser::not)?;
        self.depth = saved;
        Ok(Expr::Not(Box::new(e)))
    }

    /// A value, maybe compared: `=` and the others, [NOT] BETWEEN, [NOT] IN, [NOT] LIKE,
    /// IS [NOT] NULL.
    fn predicate(&mut self) -> Parsed {
        let left = self.sum()?;
        let value = Box::new(left);
        let t = self.peek().clone();
        let cmp = match t.tok {
            Tok::Op("=") => Some(Cmp::Eq),
            Tok::Op("<>") => Some(Cmp::Ne),
            Tok::Op("<") => Some(Cmp::Lt),
            Tok::Op(">") => Some(Cmp::Gt),
            Tok::Op("<=") => Some(Cmp::Le),
            Tok::Op(">=") => Some(Cmp::Ge),
            _ => None,
        };
        if let Some(cmp) = cmp {
            self.next();
            let right = self.operand(&format!("'{}'", t.text), Want::Value, Parser::sum)?;
            return Ok(Expr::Cmp(cmp, value, Box::new(right)));
        }
        if self.eat_kw(Keyword::Is) {
            let not = self.eat_kw(Keyword::Not);
            if !self.eat_kw(Keyword::Null) {
                let found = self.peek();
                return Err(SelectorError::at(found.pos, format!("expected NULL or NOT NULL after 'IS', found {}", describe(found))));
            }
            return Ok(Expr::IsNull { value, not });
        }
        let not = matches!(self.peek().tok, Tok::Kw(Keyword::Not))
            && matches!(self.tokens.get(self.at + 1).map(|t| &t.tok), Some(Tok::Kw(Keyword::Between | Keyword::In | Keyword::Like)));
        if not {
            self.next();
        }
        let keyword = self.next();
        match keyword.tok {
            Tok::Kw(Keyword::Between) => {
                let low = self.operand("'BETWEEN'", Want::Value, Parser::sum)?;
                if !self.eat_kw(Keyword::And) {
                    let found = self.peek();
                    return Err(SelectorError::at(found.pos, format!("expected AND between the bounds of BETWEEN, found {}", describe(found))));
                }
                let high = self.operand("'AND'", Want::Value, Parser::sum)?;
                Ok(Expr::Between { value, low: Box::new(low), high: Box::new(high), not })
            }
            Tok::Kw(Keyword::In) => Ok(Expr::In { value, list: self.in_list()?, not }),
            Tok::Kw(Keyword::Like) => Ok(Expr::Like { value, pattern: self.like_pattern()?, not }),
            _ => {
                // Not a predicate: give the token back.
                if keyword.tok != Tok::End {
                    self.at -= 1;
                }
                Ok(*value)
            }
        }
    }

    /// `( literal, … )` after IN.
    fn in_list(&mut self) -> Result<Vec<Lit>, SelectorError> {
        let open = self.next();
        if open.tok != Tok::LParen {
            return Err(SelectorError::at(open.pos, format!("expected '(' after 'IN', found {}", describe(&open))));
        }
        let mut list = Vec::new();
        loop {
            let t = self.next();
            let negative = t.tok == Tok::Op("-");
            let t = if negative { self.next() } else { t };
            let lit = match (&t.tok, negative) {
                (Tok::Str(s), false) => Lit::Str(Box::from(s.as_str())),
                (Tok::Int(i), _) => Lit::Int(if negative { -i } else { *i }),
                (Tok::Float(f), _) => Lit::Float(if negative { -f } else { *f }),
                (Tok::Kw(Keyword::True), false) => Lit::Bool(true),
                (Tok::Kw(Keyword::False), false) => Lit::Bool(false),
                _ => return Err(SelectorError::at(t.pos, format!("expected a string or number in the IN list, found {}", describe(&t)))),
            };
            list.push(lit);
            let sep = self.next();
            match sep.tok {
                Tok::Comma => continue,
                Tok::RParen => return Ok(list),
                _ => return Err(SelectorError::at(sep.pos, format!("expected ',' or ')' in the IN list, found {}", describe(&sep)))),
            }
        }
    }

    /// `'pattern' [ESCAPE 'c']` after LIKE, compiled.
    fn like_pattern(&mut self) -> Result<Vec<LikePart>, SelectorError> {
        let t = self.next();
        let Tok::Str(pattern) = t.tok else {
            return Err(SelectorError::at(t.pos, format!("expected a string pattern after 'LIKE', found {}", describe(&t))));
        };
        let mut escape = None;
        if self.eat_kw(Keyword::Escape) {
            let e = self.next();
            let mut chars = match &e.tok {
                Tok::Str(s) => s.chars(),
                _ => "".chars(),
            };
            match (chars.next(), chars.next()) {
                (Some(c), None) => escape = Some(c),
                _ => return Err(SelectorError::at(e.pos, format!("expected a one-character string after 'ESCAPE', found {}", describe(&e)))),
            }
        }
        let mut parts = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            parts.push(match c {
                c if Some(c) == escape => match chars.next() {
                    Some(escaped) => LikePart::Char(escaped),
                    None => return Err(SelectorError::at(t.pos, "the LIKE pattern ends with its escape character")),
                },
                '%' => LikePart::Many,
                '_' => LikePart::One,
                c => LikePart::Char(c),
            });
        }
        Ok(parts)
    }

    fn sum(&mut self) -> Parsed {
        self.arithmetic(Parser::product, |op| match op {
            "+" => Some(Arith::Add),
            "-" => Some(Arith::Sub),
            _ => None,
        })
    }

    fn product(&mut self) -> Parsed {
        self.arithmetic(Parser::unary, |op| match op {
            "*" => Some(Arith::Mul),
            "/" => Some(Arith::Div),
            _ => None,
        })
    }

    /// A left-associative chain of the operators `op` knows over terms `term` parses.
    fn arithmetic(&mut self, term: fn(&mut Self) -> Parsed, op: fn(&str) -> Option<Arith>) -> Parsed {
        let saved = self.depth;
        let start = self.peek().pos;
        let mut left = term(self)?;
        loop {
            let t = self.peek().clone();
            let Some(arith) = (match t.tok {
                Tok::Op(o) => op(o),
                _ => None,
            }) else {
                break;
            };
            if !left.is_number() {
                return Err(SelectorError::at(start, format!("expected a number before '{}'", t.text)));
            }
            self.next();
            self.enter(t.pos)?;
            let right = self.operand(&format!("'{}'", t.text), Want::Number, term)?;
            left = Expr::Arith(arith, Box::new(left), Box::new(right));
        }
        self.depth = saved;
        Ok(left)
    }

    fn unary(&mut self) -> Parsed {
        let t = self.peek().clone();
        let negate = match t.tok {
            Tok::Op("-") => true,
            Tok::Op("+") => false,
            _ => return self.primary(),
        };
        self.next();
        let saved = self.depth;
        self.enter(t.pos)?;
        let e = self.operand(&format!("'{}'", t.text), Want::Number, Parser::unary)?;
        self.depth = saved;
        Ok(match (negate, e) {
            (false, e) => e,
            (true, Expr::Lit(Lit::Int(i))) => Expr::Lit(Lit::Int(-i)),
            (true, Expr::Lit(Lit::Float(f))) => Expr::Lit(Lit::Float(-f)),
            (true, e) => Expr::Neg(Box::new(e)),
        })
    }

    fn primary(&mut self) -> Parsed {
        let t = self.next();
        Ok(match t.tok {
            Tok::Ident(name) => Expr::Field(field(name)),
            Tok::Str(s) => Expr::Lit(Lit::Str(s.into_boxed_str())),
            Tok::Int(i) => Expr::Lit(Lit::Int(i)),
            Tok::Float(f) => Expr::Lit(Lit::Float(f)),
            Tok::Kw(Keyword::True) => Expr::Lit(Lit::Bool(true)),
            Tok::Kw(Keyword::False) => Expr::Lit(Lit::Bool(false)),
            Tok::LParen => {
                let saved = self.depth;
                self.enter(t.pos)?;
                let e = self.or()?;
                let close = self.next();
                if close.tok != Tok::RParen {
                    return Err(SelectorError::at(
                        close.pos,
                        format!("expected ')' to close the '(' at position {}, found {}", t.pos, describe(&close)),
                    ));
                }
                self.depth = saved;
                e
            }
            _ => return Err(SelectorError::at(t.pos, format!("expected a value, found {}", describe(&t)))),
        })
    }
}
