//! A transport wrapper that sees each downstream message before rmcp dispatches it.
//!
//! rmcp hands every incoming notification to its own task, so a progress or log message sent
//! just before a result may be relayed after it — and a client drops progress that arrives after
//! its result. The fence counts notifications as they arrive, in wire order; the relay counts
//! them down once relayed; a finished call waits (bounded) until the notifications that arrived
//! before its result are relayed. Ordering is then exact, not a matter of timing.

// Logging is deprecated by SEP-2577 but still relayed.
#![allow(deprecated)]

use std::sync::Arc;

use rmcp::model::{GetExtensions, JsonRpcMessage, JsonRpcNotification, ServerNotification};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;

use super::relay::{Routes, Seq};

/// Wraps a downstream transport; see the module docs.
pub struct Fenced<T> {
    inner: T,
    routes: Arc<Routes>,
}

impl<T> Fenced<T> {
    pub fn new(inner: T, routes: Arc<Routes>) -> Self {
        Self { inner, routes }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Fenced<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let mut message = self.inner.receive().await;
        if let Some(JsonRpcMessage::Notification(JsonRpcNotification { notification, .. })) =
            &mut message
        {
            let seq = match notification {
                ServerNotification::ProgressNotification(n) => {
                    Some(self.routes.arrived(Some(n.params.progress_token.clone())))
                }
                ServerNotification::LoggingMessageNotification(_) => {
                    Some(self.routes.arrived(None))
                }
                _ => None,
            };
            if let Some(seq) = seq {
                // rmcp moves these extensions into the handler's NotificationContext.
                notification.extensions_mut().insert(Seq(seq));
            }
        }
        message
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
