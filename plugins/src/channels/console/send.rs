use futures_util::future::BoxFuture;
use switchboard_core::{
    delivery::Channel,
    mask,
    outbox::{Action, SendResult},
};

/// Email or SMS written to the log.
pub struct Console {
    /// `email` or `sms`.
    pub channel: &'static str,
}

impl Channel for Console {
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult> {
        let shown = action.masked_payload();
        let field = |k: &str| {
            shown
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        // The recipient is shown as much as helps recognise it; the text on one line.
        let to = field("to");
        let to = mask::one_line(&if self.channel == "sms" {
            mask::phone(&to)
        } else {
            to.split(',')
                .map(|a| mask::email(a.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        });
        tracing::info!(
            channel = self.channel,
            action_id = %action.id,
            to = %to,
            subject = %mask::one_line(&field("subject")),
            text = %mask::one_line(&field("text")),
            "console delivery (configure channels.{} to send for real)",
            self.channel
        );
        Box::pin(async { SendResult::Sent(Some("written to the log".into())) })
    }

    fn concurrency(&self) -> usize {
        64
    }
}

/// `log::info` / `log::warn` lines.
pub struct Log;

impl Channel for Log {
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult> {
        let shown = action.masked_payload();
        let message = mask::one_line(shown.get("message").and_then(|v| v.as_str()).unwrap_or(""));
        let (provider, event_id) = (&action.provider, action.event_id);
        if shown.get("level").and_then(|v| v.as_str()) == Some("warn") {
            tracing::warn!(%provider, %event_id, "{message}");
        } else {
            tracing::info!(%provider, %event_id, "{message}");
        }
        Box::pin(async { SendResult::Sent(None) })
    }

    fn concurrency(&self) -> usize {
        64
    }
}
