//! Linearizability checking of recorded concurrent histories.
//!
//! This crate owns the checker and the models it checks against; it does no I/O. A history is
//! a list of [`Operation`]s, each with the time its call was made and the time and output of
//! its answer, or [`Return::Unknown`] when no answer came (a timeout, a dropped connection,
//! a 503 that may still commit): such an operation may take effect at any moment after its
//! call, or never. [`check`] searches for a linearization, an order of the operations that
//! respects real time (an operation that answered before another was called comes first) and
//! in which every answer is what the sequential [`Model`] gives. The search is Wing & Gong's,
//! with Lowe's memoisation of (operations linearized, model state) pairs already explored, as
//! in Porcupine. [`check_partitioned`] checks each partition (a key, for a key-value store) on
//! its own, which linearizability allows (it is a local property) and which keeps the search
//! small.

pub mod register;

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

pub use register::{Register, RegisterInput, RegisterOutput};

/// A sequential specification.
pub trait Model {
    /// The state of the object.
    type State: Clone + Eq + Hash + Debug;
    /// What a call asks for.
    type Input: Debug;
    /// What a call answers.
    type Output: Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `input` in `state` answered `output`, or `None` if it could not have
    /// answered that. `output` is `None` when the answer is unknown: the operation took
    /// effect with whatever answer it would give.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Return<O> {
    /// It answered `output` at `ns`.
    At {
        /// When the answer arrived, on the same clock as the calls.
        ns: u64,
        /// The answer.
        output: O,
    },
    /// No answer: it may have taken effect at any moment after its call, or never.
    Unknown,
}

/// One call in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// When the call was made (nanoseconds on a clock shared by every client).
    pub call_ns: u64,
    /// What was asked.
    pub input: I,
    /// How it ended.
    pub ret: Return<O>,
}

impl<I, O> Operation<I, O> {
    fn ret_ns(&self) -> u64 {
        match self.ret {
            Return::At { ns, .. } => ns,
            Return::Unknown => u64::MAX,
        }
    }

    fn output(&self) -> Option<&O> {
        match &self.ret {
            Return::At { output, .. } => Some(output),
            Return::Unknown => None,
        }
    }
}

/// Why a history was not shown linearizable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No linearization exists.
    #[error(
        "not linearizable: at most {} operations could be ordered ({longest:?}); after them \
         operation {stuck} (which had answered) could not be placed",
        longest.len()
    )]
    NotLinearizable {
        /// The longest prefix of a linearization the search found (operation indexes).
        longest: Vec<usize>,
        /// An operation that had to come next after that prefix and could not.
        stuck: usize,
    },
    /// The search gave up after this many steps without an answer.
    #[error("gave up after {0} search steps")]
    Budget(u64),
    /// An operation answered before it was called.
    #[error("operation {0} answers before its call")]
    BadInterval(usize),
}

/// Search steps [`check`] takes before giving up; plenty for histories of a few thousand
/// operations per partition with a few dozen concurrent clients.
pub const DEFAULT_BUDGET: u64 = 50_000_000;

const NONE: usize = usize::MAX;

/// The call and return events of a history in time order, as a doubly linked list that
/// operations are lifted out of as they are linearized and put back on backtracking.
struct Events {
    /// For each event: its operation, and whether it is the call.
    op: Vec<(usize, bool)>,
    /// For each call event, its return event.
    ret_of: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Events {
    fn new<I, O>(history: &[Operation<I, O>]) -> Self {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (i, o) in history.iter().enumerate() {
            // At equal times a call sorts before a return: the two count as concurrent.
            order.push((o.call_ns, false, i));
            order.push((o.ret_ns(), true, i));
        }
        order.sort_unstable();
        let n = order.len();
        let head = n;
        let mut op = Vec::with_capacity(n);
        let mut ret_of = vec![NONE; n];
        let mut call_event = vec![NONE; history.len()];
        for (e, &(_, is_return, i)) in order.iter().enumerate() {
            op.push((i, !is_return));
            if is_return {
                ret_of[call_event[i]] = e;
            } else {
                call_event[i] = e;
            }
        }
        // Event `head` is the sentinel in front of the list.
        let next = (0..=n).map(|e| {
            if e == head {
                0
            } else if e + 1 < n {
                e + 1
            } else {
                NONE
            }
        });
        let prev = (0..=n).map(|e| {
            if e == 0 {
                head
            } else if e < n {
                e - 1
            } else {
                NONE
            }
        });
        let mut next: Vec<usize> = next.collect();
        if n == 0 {
            next[head] = NONE;
        }
        Self {
            op,
            ret_of,
            next,
            prev: prev.collect(),
            head,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }

    /// Takes call `e` and its return out of the list.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        self.unlink(self.ret_of[e]);
    }

    /// Undoes [`Events::lift`] of `e` (in the reverse order of the lifts).
    fn unlift(&mut self, e: usize) {
        self.relink(self.ret_of[e]);
        self.relink(e);
    }
}

/// A set of operation indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Finds a linearization of `history` under `model`: the operation indexes in the order they
/// took effect (operations with an unknown answer that never needed to take effect come
/// last). Gives up after `budget` search steps.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<Vec<usize>, CheckError> {
    if let Some(i) = history.iter().position(|o| o.ret_ns() < o.call_ns) {
        return Err(CheckError::BadInterval(i));
    }
    let mut events = Events::new(history);
    let mut linearized = Bits::new(history.len());
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized so far, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck = 0;
    let mut cursor = events.next[events.head];
    let mut steps = 0u64;
    while events.next[events.head] != NONE {
        steps += 1;
        if steps > budget {
            return Err(CheckError::Budget(budget));
        }
        let e = cursor;
        let (i, is_call) = events.op[e];
        if is_call {
            let op = &history[i];
            if let Some(after) = model.step(&state, &op.input, op.output()) {
                let mut bits = linearized.clone();
                bits.set(i);
                if seen.insert((bits.clone(), after.clone())) {
                    let before = std::mem::replace(&mut state, after);
                    stack.push((e, before));
                    linearized = bits;
                    events.lift(e);
                    cursor = events.next[events.head];
                    continue;
                }
            }
            cursor = events.next[e];
        } else {
            // The answer of an operation not yet placed: everything placed since the last
            // choice cannot be extended, so undo that choice and try the next call.
            if stack.len() >= longest.len() {
                longest = stack.iter().map(|&(c, _)| events.op[c].0).collect();
                stuck = i;
            }
            let Some((c, before)) = stack.pop() else {
                return Err(CheckError::NotLinearizable { longest, stuck });
            };
            linearized.clear(events.op[c].0);
            state = before;
            events.unlift(c);
            cursor = events.next[c];
        }
    }
    Ok(stack.iter().map(|&(c, _)| events.op[c].0).collect())
}

/// Checks each partition of `history` on its own (`partition` names an operation's
/// partition, for instance its key). Indexes in the answer and in errors are indexes into
/// `history`. Returns how many partitions were checked.
pub fn check_partitioned<M, K, F>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition: F,
    budget: u64,
) -> Result<usize, (K, CheckError)>
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
    K: Ord + Clone,
    F: Fn(&M::Input) -> K,
{
    let mut parts: std::collections::BTreeMap<K, Vec<usize>> = Default::default();
    for (i, o) in history.iter().enumerate() {
        parts.entry(partition(&o.input)).or_default().push(i);
    }
    let count = parts.len();
    for (key, indexes) in parts {
        let sub: Vec<_> = indexes.iter().map(|&i| history[i].clone()).collect();
        let back = |v: Vec<usize>| v.into_iter().map(|j| indexes[j]).collect::<Vec<_>>();
        match check(model, &sub, budget) {
            Ok(_) => {}
            Err(CheckError::NotLinearizable { longest, stuck }) => {
                let e = CheckError::NotLinearizable {
                    longest: back(longest),
                    stuck: indexes[stuck],
                };
                return Err((key, e));
            }
            Err(CheckError::BadInterval(j)) => {
                return Err((key, CheckError::BadInterval(indexes[j])));
            }
            Err(e) => return Err((key, e)),
        }
    }
    Ok(count)
}
