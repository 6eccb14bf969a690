//! Evaluates a parsed selector against one message with JMS's three-valued logic: a
//! comparison with a missing header, or with a header that is not a number where a number
//! is needed, is unknown, and unknown never selects. Values borrow from the message and
//! the tree: nothing is allocated per message.

use super::parser::{Arith, Cmp, Expr, Field, LikePart, Lit};
use crate::engine::message::Message;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn float(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn value<'a>(self) -> Value<'a> {
        match self {
            Num::Int(i) => Value::Int(i),
            Num::Float(f) => Value::Float(f),
        }
    }
}

/// Whether `root` selects `message`: true, not false or unknown.
pub(super) fn selects(root: &Expr, message: &Message) -> bool {
    truth(root, message) == Some(true)
}

/// True, false or unknown (`None`).
fn truth(e: &Expr, m: &Message) -> Option<bool> {
    match e {
        Expr::And(items) => junction(items, m, false),
        Expr::Or(items) => junction(items, m, true),
        Expr::Not(e) => truth(e, m).map(|b| !b),
        Expr::Cmp(op, l, r) => compare(*op, value(l, m), value(r, m)),
        Expr::Between { value: v, low, high, not } => {
            let v = value(v, m);
            let within = and(compare(Cmp::Ge, v, value(low, m)), compare(Cmp::Le, v, value(high, m)));
            within.map(|b| b != *not)
        }
        Expr::In { value: v, list, not } => {
            let v = value(v, m);
            if v == Value::Null {
                return None;
            }
            let mut unknown = false;
            for lit in list {
                match compare(Cmp::Eq, v, literal(lit)) {
                    Some(true) => return Some(!*not),
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            (!unknown).then_some(*not)
        }
        Expr::Like { value: v, pattern, not } => like(value(v, m), pattern).map(|b| b != *not),
        Expr::IsNull { value: v, not } => Some((value(v, m) == Value::Null) != *not),
        other => match value(other, m) {
            Value::Bool(b) => Some(b),
            Value::Str(s) => boolean(s),
            _ => None,
        },
    }
}

/// AND (`decisive` false) or OR (`decisive` true): one item of the decisive value decides,
/// else any unknown item makes the whole unknown.
fn junction(items: &[Expr], m: &Message, decisive: bool) -> Option<bool> {
    let mut unknown = false;
    for item in items {
        match truth(item, m) {
            Some(b) if b == decisive => return Some(decisive),
            None => unknown = true,
            Some(_) => {}
        }
    }
    (!unknown).then_some(!decisive)
}

fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn value<'a>(e: &'a Expr, m: &'a Message) -> Value<'a> {
    match e {
        Expr::Lit(lit) => literal(lit),
        Expr::Field(f) => field(f, m),
        Expr::Neg(e) => match number(value(e, m)) {
            Some(Num::Int(i)) => i.checked_neg().map_or(Value::Float(-(i as f64)), Value::Int),
            Some(Num::Float(f)) => Value::Float(-f),
            None => Value::Null,
        },
        Expr::Arith(op, l, r) => match (number(value(l, m)), number(value(r, m))) {
            (Some(a), Some(b)) => arith(*op, a, b).map_or(Value::Null, Num::value),
            _ => Value::Null,
        },
        condition => truth(condition, m).map_or(Value::Null, Value::Bool),
    }
}

fn literal(lit: &Lit) -> Value<'_> {
    match lit {
        Lit::Str(s) => Value::Str(s),
        Lit::Int(i) => Value::Int(*i),
        Lit::Float(f) => Value::Float(*f),
        Lit::Bool(b) => Value::Bool(*b),
    }
}

fn field<'a>(f: &'a Field, m: &'a Message) -> Value<'a> {
    match f {
        Field::Header(name) => m.headers.iter().find(|(k, _)| k.as_str() == &**name).map_or(Value::Null, |(_, v)| Value::Str(v)),
        Field::MessageId => i64::try_from(m.id.0).map_or(Value::Null, Value::Int),
        Field::Priority => Value::Int(i64::from(m.properties.priority)),
        Field::Expiration => i64::try_from(m.properties.expires.unwrap_or(0)).map_or(Value::Null, Value::Int),
        Field::DeliveryMode => Value::Str(if m.persistent { "PERSISTENT" } else { "NON_PERSISTENT" }),
    }
}

/// A value as a number: numbers as they are, a string when it reads as one (a STOMP
/// header is always a string), anything else is no number.
fn number(v: Value) -> Option<Num> {
    match v {
        Value::Int(i) => Some(Num::Int(i)),
        Value::Float(f) => Some(Num::Float(f)),
        Value::Str(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Some(Num::Int(i));
            }
            // Rust also reads "inf" and "NaN"; a header that says so is no number here.
            let numeric = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            numeric.then(|| s.parse::<f64>().ok()).flatten().map(Num::Float)
        }
        Value::Null | Value::Bool(_) => None,
    }
}

fn boolean(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Integer arithmetic while it fits, as Java's `long`; decimals otherwise. Integer
/// division by zero is unknown.
fn arith(op: Arith, a: Num, b: Num) -> Option<Num> {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        let exact = match op {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
            Arith::Mul => x.checked_mul(y),
            Arith::Div if y == 0 => return None,
            Arith::Div => x.checked_div(y),
        };
        if let Some(r) = exact {
            return Some(Num::Int(r));
        }
    }
    let (x, y) = (a.float(), b.float());
    Some(Num::Float(match op {
        Arith::Add => x + y,
        Arith::Sub => x - y,
        Arith::Mul => x * y,
        Arith::Div => x / y,
    }))
}

fn holds(op: Cmp, ord: Ordering) -> bool {
    match op {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    }
}

/// Booleans are only equal or not.
fn equality(op: Cmp, equal: bool) -> Option<bool> {
    match op {
        Cmp::Eq => Some(equal),
        Cmp::Ne => Some(!equal),
        _ => None,
    }
}

fn compare(op: Cmp, l: Value, r: Value) -> Option<bool> {
    match (l, r) {
        (Value::Null, _) | (_, Value::Null) => None,
        // Two strings compare as strings (ordered as ActiveMQ orders them: by character).
        (Value::Str(a), Value::Str(b)) => Some(holds(op, a.cmp(b))),
        (Value::Bool(a), Value::Bool(b)) => equality(op, a == b),
        (Value::Bool(a), Value::Str(s)) | (Value::Str(s), Value::Bool(a)) => equality(op, a == boolean(s)?),
        (Value::Bool(_), _) | (_, Value::Bool(_)) => None,
        (l, r) => {
            let ord = match (number(l)?, number(r)?) {
                (Num::Int(a), Num::Int(b)) => a.cmp(&b),
                (a, b) => a.float().partial_cmp(&b.float())?,
            };
            Some(holds(op, ord))
        }
    }
}

fn like(v: Value, pattern: &[LikePart]) -> Option<bool> {
    match v {
        Value::Str(s) => Some(like_str(s, pattern)),
        // JMSMessageID is a number here; written out on the stack.
        Value::Int(i) => {
            let mut buf = [0u8; 20];
            let mut at = buf.len();
            let mut n = i.unsigned_abs();
            loop {
                at -= 1;
                buf[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let digits = std::str::from_utf8(&buf[at..]).ok()?;
            (i >= 0).then(|| like_str(digits, pattern))
        }
        _ => None,
    }
}

/// `%` any run of characters, `_` exactly one; backtracks only to the last `%`.
fn like_str(s: &str, pattern: &[LikePart]) -> bool {
    let (mut p, mut i) = (0, 0);
    // After the last `%`: where the pattern resumes, and where in `s` that try began.
    let mut retry: Option<(usize, usize)> = None;
    loop {
        let c = s[i..].chars().next();
        let step = match (pattern.get(p), c) {
            (Some(LikePart::Many), _) => {
                retry = Some((p + 1, i));
                p += 1;
                continue;
            }
            (Some(LikePart::One), Some(c)) => Some(c),
            (Some(LikePart::Char(want)), Some(c)) if *want == c => Some(c),
            (None, None) => return true,
            _ => None,
        };
        if let Some(c) = step {
            p += 1;
            i += c.len_utf8();
            continue;
        }
        // Mismatch: let the last `%` take one more character, or fail.
        let Some((resume, from)) = retry else { return false };
        let Some(c) = s[from..].chars().next() else { return false };
        retry = Some((resume, from + c.len_utf8()));
        p = resume;
        i = from + c.len_utf8();
    }
}
