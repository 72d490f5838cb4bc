//! A client connection handed over after `101 Switching Protocols`: what the server side gives the
//! proxy's tunnel once the answer is written.

use super::Rewound;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// An HTTP/1.1 connection after a `101 Switching Protocols`: the client side of a tunnel.
pub(crate) type UpgradedClient = Rewound<Box<dyn Io>>;

/// What a client connection is: a TCP stream or a TLS stream over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Carried in an upgrade request's extensions: the connection, once the `101` answer is written.
/// (Shared and taken once, as extensions must be `Clone`.)
#[derive(Clone)]
pub(crate) struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<UpgradedClient>>>>);

impl PendingUpgrade {
    /// The upgrade whose connection `receiver` brings once the `101` is written.
    pub(crate) fn new(receiver: oneshot::Receiver<UpgradedClient>) -> PendingUpgrade {
        PendingUpgrade(Arc::new(Mutex::new(Some(receiver))))
    }

    /// The upgraded connection, once the `101` went out; an error if the connection ended instead.
    pub(crate) async fn upgraded(self) -> Result<UpgradedClient, oneshot::error::RecvError> {
        let receiver = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        match receiver {
            Some(receiver) => receiver.await,
            None => oneshot::channel::<UpgradedClient>().1.await,
        }
    }
}
