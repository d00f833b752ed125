//! The tee body: streams the response to the client frame by frame while keeping a
//! copy, bounded by `max_body_bytes`, for the store.
//!
//! Nothing is held back: each frame is handed on the moment the handler produces it.
//! The copy is given to the store only when the body ended cleanly (no error, no
//! trailers, length as announced). Past the cap the copy is dropped and the rest
//! streams through untouched; a body dropped early (client gone) stores nothing.
//! A body still going after its first frame tells the key's waiting requests, which
//! then stop waiting for it soon (see [`flight`](super::flight)).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::flight::StageHandle;

/// Called with the complete body.
pub(crate) type OnComplete = Box<dyn FnOnce(Bytes) + Send>;

pin_project! {
    pub(crate) struct TeeBody {
        #[pin]
        inner: Body,
        copy: Option<BytesMut>,
        cap: usize,
        expected: Option<u64>,
        on_complete: Option<OnComplete>,
        stage: Option<StageHandle>,
    }
}

impl TeeBody {
    pub(crate) fn new(
        inner: Body,
        cap: usize,
        expected: Option<u64>,
        on_complete: OnComplete,
    ) -> Self {
        let initial = expected.map_or(8 * 1024, |n| n as usize).min(cap);
        Self {
            inner,
            copy: Some(BytesMut::with_capacity(initial)),
            cap,
            expected,
            on_complete: Some(on_complete),
            stage: None,
        }
    }

    /// Reports through `stage` when the body outlasts its first frame.
    pub(crate) fn with_stage(mut self, stage: Option<StageHandle>) -> Self {
        self.stage = stage;
        self
    }
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(copy) = this.copy.as_mut() {
                        if copy.len() + data.len() > *this.cap {
                            *this.copy = None;
                            *this.on_complete = None;
                        } else {
                            copy.extend_from_slice(data);
                            // hyper stops polling a body once its announced length has
                            // been sent, so a complete known-length body may never be
                            // polled to its end: store it as soon as every byte is here.
                            if this.expected.is_some_and(|n| n == copy.len() as u64)
                                && let (Some(copy), Some(done)) =
                                    (this.copy.take(), this.on_complete.take())
                            {
                                done(copy.freeze());
                            }
                        }
                    }
                    if this.on_complete.is_some()
                        && !this.inner.is_end_stream()
                        && let Some(stage) = this.stage.take()
                    {
                        stage.streaming();
                    }
                } else {
                    // Trailers cannot be replayed from the store.
                    *this.copy = None;
                    *this.on_complete = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.copy = None;
                *this.on_complete = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                if let (Some(copy), Some(done)) = (this.copy.take(), this.on_complete.take())
                    && this.expected.is_none_or(|n| n == copy.len() as u64)
                {
                    done(copy.freeze());
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Until the copy has been handed over, report the end only through
        // `poll_frame`, so completion is always seen.
        self.on_complete.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A body yielding the given frames, then an optional error.
    struct Chunks(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn run(
        frames: Vec<Result<Frame<Bytes>, std::io::Error>>,
        cap: usize,
        expected: Option<u64>,
    ) -> (Option<Bytes>, Option<Bytes>) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let tee = TeeBody::new(
            Body::new(Chunks(frames.into())),
            cap,
            expected,
            Box::new(move |b| *s.lock().unwrap() = Some(b)),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(async { tee.collect().await.ok().map(|c| c.to_bytes()) });
        let stored = seen.lock().unwrap().take();
        (out, stored)
    }

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    #[test]
    fn complete_body_is_passed_on_and_kept() {
        let (out, stored) = run(vec![data(b"ab"), data(b"cd")], 10, Some(4));
        assert_eq!(out.unwrap(), "abcd");
        assert_eq!(stored.unwrap(), "abcd");
    }

    #[test]
    fn over_the_cap_streams_through_and_keeps_nothing() {
        let (out, stored) = run(vec![data(b"abc"), data(b"def"), data(b"g")], 4, None);
        assert_eq!(out.unwrap(), "abcdefg");
        assert!(stored.is_none());
    }

    #[test]
    fn short_body_error_or_trailers_keep_nothing() {
        let (_, stored) = run(vec![data(b"ab")], 10, Some(4));
        assert!(stored.is_none(), "length mismatch");
        let (out, stored) = run(vec![data(b"ab"), Err(std::io::Error::other("x"))], 10, None);
        assert!(out.is_none());
        assert!(stored.is_none(), "body error");
        let (_, stored) = run(
            vec![data(b"ab"), Ok(Frame::trailers(http::HeaderMap::new()))],
            10,
            None,
        );
        assert!(stored.is_none(), "trailers");
    }
}
