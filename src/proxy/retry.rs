//! Whether a failed try of a request goes to another server, and whether the failure counts against
//! the server that had it: one pure decision over who failed (client, gateway or backend), how far
//! the exchange had got, what kind of request it is, and what is left of its budget.
//!
//! The rules, nginx's `proxy_next_upstream` extended for model serving:
//! - only a backend's failure counts against it (passive health) or leads to another try; a client's
//!   failure (a broken, cut or oversized body, a reset stream) and the gateway's own limits answer
//!   the client and leave every server's health alone;
//! - never once a byte of the response went to the client, never past the upstream's tries or its
//!   `next_upstream_timeout`, and only with the body at hand again (unsent, or kept in full);
//! - a request that never reached the server goes on whatever its method;
//! - one that reached it goes on after the server closed or reset the connection before any answer,
//!   or answered 502/503, when its method is idempotent, the upstream allows others
//!   (`next_upstream_non_idempotent`), or it is an inference request: a generation that produced no
//!   byte has had no effect beyond GPU time, and sending it again is what its client would do;
//! - after a timeout or a broken answer, only idempotent requests (or all, with
//!   `next_upstream_non_idempotent`): a generation that timed out may still be running, and a second
//!   one would double its cost.

/// Who caused a failure on the proxy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The client: a malformed, cut or oversized request body, a reset stream, a client gone.
    Client,
    /// The gateway's own limits (the total timeout).
    Gateway,
    /// The backend: connect refused or timed out, send or read timeout, a broken or cut response, 5xx;
    /// with how far the exchange had got.
    Upstream(Phase),
}

impl Origin {
    /// Whether the failure counts toward the server's `max_fails` (passive health).
    pub(crate) fn counts_against_server(self) -> bool {
        matches!(self, Origin::Upstream(_))
    }
}

/// How far a failed try had got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The server took no byte of the request: no connection, or a connection that failed before
    /// the first write.
    NotSent,
    /// The request went out, in part or whole, and the server closed or reset the connection before
    /// any byte of an answer.
    NoAnswer,
    /// The server answered 502 or 503.
    Unavailable,
    /// The server took longer than the send or read timeout: it may still be working on the request.
    TimedOut,
    /// The server's answer was not HTTP (a broken head, a connection cut inside the head).
    BrokenAnswer,
}

/// What the request is, as far as sending it again goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestKind {
    /// Its method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub(crate) idempotent: bool,
    /// An inference request (`ai::Inference`): safe to send again before its first response byte.
    pub(crate) inference: bool,
    /// The upstream sends any request again (`next_upstream_non_idempotent`).
    pub(crate) any_method: bool,
}

/// One failed try, with everything the decision looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailedTry {
    /// Who failed, and how far a backend's exchange had got.
    pub(crate) origin: Origin,
    /// The request.
    pub(crate) request: RequestKind,
    /// Whether a byte of the response reached the client.
    pub(crate) response_started: bool,
    /// Whether the body can be sent again: it was not sent, or it was kept in full.
    pub(crate) body_at_hand: bool,
    /// Whether the upstream's tries allow another server.
    pub(crate) tries_left: bool,
    /// Whether `next_upstream_timeout` has passed since the request arrived.
    pub(crate) deadline_passed: bool,
}

/// What happens after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send the request to another server of the upstream.
    TryAnother,
    /// Answer the client with this try's outcome, for this reason.
    Answer(Stop),
}

/// Why a failed request is not sent to another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The client or the gateway failed, not the server.
    NotTheServers,
    /// Part of the response already went to the client.
    ResponseStarted,
    /// Every try the upstream allows was used.
    NoTriesLeft,
    /// `next_upstream_timeout` passed.
    DeadlinePassed,
    /// The request reached the server and may not be sent twice (its method, or a timeout).
    NotSafeToResend,
    /// The body streamed and was not kept (larger than `next_upstream_body_max`, or no length).
    BodyNotKept,
}

impl Stop {
    /// Why, for the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Stop::NotTheServers => "the failure was not the server's",
            Stop::ResponseStarted => "the response had begun",
            Stop::NoTriesLeft => "no tries left",
            Stop::DeadlinePassed => "next_upstream_timeout passed",
            Stop::NotSafeToResend => "the request reached the server and is not safe to send twice",
            Stop::BodyNotKept => {
                "its body streamed and was not kept (larger than next_upstream_body_max, or without Content-Length)"
            }
        }
    }
}

/// The retry decision for one failed try.
pub(crate) fn decide(failed: FailedTry) -> Decision {
    let Origin::Upstream(phase) = failed.origin else {
        return Decision::Answer(Stop::NotTheServers);
    };
    let stop = if failed.response_started {
        Stop::ResponseStarted
    } else if !failed.tries_left {
        Stop::NoTriesLeft
    } else if failed.deadline_passed {
        Stop::DeadlinePassed
    } else if !safe_to_resend(phase, failed.request) {
        Stop::NotSafeToResend
    } else if !failed.body_at_hand {
        Stop::BodyNotKept
    } else {
        return Decision::TryAnother;
    };
    Decision::Answer(stop)
}

/// Whether a request that failed at `phase` may go to another server, by what it is.
fn safe_to_resend(phase: Phase, request: RequestKind) -> bool {
    let method_allows = request.idempotent || request.any_method;
    match phase {
        Phase::NotSent => true,
        Phase::NoAnswer | Phase::Unavailable => method_allows || request.inference,
        Phase::TimedOut | Phase::BrokenAnswer => method_allows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [Phase; 5] =
        [Phase::NotSent, Phase::NoAnswer, Phase::Unavailable, Phase::TimedOut, Phase::BrokenAnswer];

    /// Every combination of the decision's inputs.
    fn every_failed_try() -> impl Iterator<Item = FailedTry> {
        let origins = [Origin::Client, Origin::Gateway].into_iter().chain(PHASES.map(Origin::Upstream));
        origins.flat_map(|origin| {
            (0..128u32).map(move |bits| {
                let bit = |n: u32| bits & (1 << n) != 0;
                FailedTry {
                    origin,
                    request: RequestKind { idempotent: bit(0), inference: bit(1), any_method: bit(2) },
                    response_started: bit(3),
                    body_at_hand: bit(4),
                    tries_left: !bit(5),
                    deadline_passed: bit(6),
                }
            })
        })
    }

    /// A failed try that goes on, unless a row changes one thing.
    fn base(phase: Phase, request: RequestKind) -> FailedTry {
        FailedTry {
            origin: Origin::Upstream(phase),
            request,
            response_started: false,
            body_at_hand: true,
            tries_left: true,
            deadline_passed: false,
        }
    }

    const POST: RequestKind = RequestKind { idempotent: false, inference: false, any_method: false };
    const GET: RequestKind = RequestKind { idempotent: true, ..POST };
    const CHAT: RequestKind = RequestKind { inference: true, ..POST };
    const POST_ANY: RequestKind = RequestKind { any_method: true, ..POST };

    #[test]
    fn the_decision_table() {
        use Decision::{Answer, TryAnother};
        let rows: &[(FailedTry, Decision)] = &[
            // Never reached the server: any method goes on.
            (base(Phase::NotSent, POST), TryAnother),
            (base(Phase::NotSent, GET), TryAnother),
            // Closed or reset before an answer, or 502/503: idempotent, inference, or allowed.
            (base(Phase::NoAnswer, POST), Answer(Stop::NotSafeToResend)),
            (base(Phase::NoAnswer, GET), TryAnother),
            (base(Phase::NoAnswer, CHAT), TryAnother),
            (base(Phase::NoAnswer, POST_ANY), TryAnother),
            (base(Phase::Unavailable, POST), Answer(Stop::NotSafeToResend)),
            (base(Phase::Unavailable, CHAT), TryAnother),
            (base(Phase::Unavailable, GET), TryAnother),
            // A timeout or a broken answer: the generation may still run; nginx's rule alone.
            (base(Phase::TimedOut, CHAT), Answer(Stop::NotSafeToResend)),
            (base(Phase::TimedOut, GET), TryAnother),
            (base(Phase::TimedOut, POST_ANY), TryAnother),
            (base(Phase::BrokenAnswer, CHAT), Answer(Stop::NotSafeToResend)),
            (base(Phase::BrokenAnswer, GET), TryAnother),
            // Not the server's failure.
            (FailedTry { origin: Origin::Client, ..base(Phase::NotSent, GET) }, Answer(Stop::NotTheServers)),
            (FailedTry { origin: Origin::Gateway, ..base(Phase::TimedOut, GET) }, Answer(Stop::NotTheServers)),
            // The budget.
            (FailedTry { response_started: true, ..base(Phase::NoAnswer, CHAT) }, Answer(Stop::ResponseStarted)),
            (FailedTry { tries_left: false, ..base(Phase::NotSent, GET) }, Answer(Stop::NoTriesLeft)),
            (FailedTry { deadline_passed: true, ..base(Phase::NotSent, GET) }, Answer(Stop::DeadlinePassed)),
            (FailedTry { body_at_hand: false, ..base(Phase::NoAnswer, CHAT) }, Answer(Stop::BodyNotKept)),
            (FailedTry { body_at_hand: false, ..base(Phase::NoAnswer, POST) }, Answer(Stop::NotSafeToResend)),
        ];
        for (failed, expected) in rows {
            assert_eq!(decide(*failed), *expected, "{failed:?}");
        }
    }

    #[test]
    fn invariants_hold_for_every_combination() {
        for failed in every_failed_try() {
            let again = decide(failed) == Decision::TryAnother;
            if again {
                assert!(failed.origin.counts_against_server(), "only a server's failure: {failed:?}");
                assert!(!failed.response_started, "never after a response byte: {failed:?}");
                assert!(failed.tries_left && !failed.deadline_passed, "within the budget: {failed:?}");
                assert!(failed.body_at_hand, "with the body: {failed:?}");
            }
            // Within the budget and with the body, a server's failure before it took the request
            // always goes on; a generation is never resent after a timeout unless allowed.
            let budget = failed.tries_left && !failed.deadline_passed && failed.body_at_hand;
            if failed.origin == Origin::Upstream(Phase::NotSent) && !failed.response_started && budget {
                assert!(again, "{failed:?}");
            }
            let r = failed.request;
            if failed.origin == Origin::Upstream(Phase::TimedOut) && !r.idempotent && !r.any_method {
                assert!(!again, "{failed:?}");
            }
        }
    }
}
