//! The end of a response body, for the layers that observe it: the access log writes
//! its completion event there and the metrics release the in-flight count and record
//! the body's size. Both layers hand their part to one [`Tail`], whose body wrapper runs
//! each frame through both.

#[cfg(any(feature = "trace", feature = "metrics"))]
use std::task::{Context, Poll};

use axum::response::Response;

/// What the response body still owes the access log and the metrics: one body wrapper
/// releases both, so that the stack, which runs both layers in one level, wraps and
/// boxes the body once.
#[derive(Default)]
pub(crate) struct Tail {
    #[cfg(feature = "trace")]
    pub(crate) log: Option<crate::trace::BodyLog>,
    #[cfg(feature = "metrics")]
    pub(crate) meter: Option<crate::metrics::BodyMeter>,
}

// The constructors assign after `default()` because the other layer's field exists
// only with the other feature.
#[allow(clippy::field_reassign_with_default)]
impl Tail {
    /// The access log's part alone (its own service).
    #[cfg(feature = "trace")]
    pub(crate) fn log(log: crate::trace::BodyLog) -> Self {
        let mut tail = Self::default();
        tail.log = Some(log);
        tail
    }

    /// The metrics' part alone (its own service).
    #[cfg(feature = "metrics")]
    pub(crate) fn meter(meter: Option<crate::metrics::BodyMeter>) -> Self {
        let mut tail = Self::default();
        tail.meter = meter;
        tail
    }

    /// `res` with its body wrapped, when a layer is owed its end.
    pub(crate) fn wrap(self, res: Response) -> Response {
        #[cfg(any(feature = "trace", feature = "metrics"))]
        {
            #[allow(unused_mut)]
            let mut owed = false;
            #[cfg(feature = "trace")]
            {
                owed |= self.log.is_some();
            }
            #[cfg(feature = "metrics")]
            {
                owed |= self.meter.is_some();
            }
            if owed {
                return res.map(|inner| axum::body::Body::new(TailBody { inner, tail: self }));
            }
        }
        res
    }
}

/// The response body with [`Tail`]'s work: each frame goes to the metrics, then to the
/// access log (the order they had when each layer wrapped the body itself, the log's
/// wrapper around the metrics').
#[cfg(any(feature = "trace", feature = "metrics"))]
struct TailBody {
    inner: axum::body::Body,
    tail: Tail,
}

#[cfg(any(feature = "trace", feature = "metrics"))]
impl http_body::Body for TailBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        #[cfg(feature = "metrics")]
        if let Some(meter) = &mut this.tail.meter {
            let inner = &this.inner;
            meter.polled(&polled, || inner.is_end_stream());
        }
        #[cfg(feature = "trace")]
        if let Some(log) = &mut this.tail.log {
            log.polled(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(any(feature = "trace", feature = "metrics"))]
impl Drop for TailBody {
    // The access log's line first, then the metrics' completion (the same order).
    fn drop(&mut self) {
        #[cfg(feature = "trace")]
        if let Some(log) = &mut self.tail.log {
            log.dropped(http_body::Body::is_end_stream(&self.inner));
        }
        #[cfg(feature = "metrics")]
        if let Some(meter) = &mut self.tail.meter {
            meter.dropped();
        }
    }
}
