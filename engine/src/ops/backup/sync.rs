//! Small thread-coordination primitives of the backup pipeline.

use super::*;

/// A value one thread produces and another waits for.
pub(super) struct Slot<T>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T: Clone> Slot<T> {
    pub(super) fn new() -> Self {
        Slot(Arc::new((Mutex::new(None), Condvar::new())))
    }
    pub(super) fn set(&self, v: T) {
        *self.0 .0.lock().expect("slot lock") = Some(v);
        self.0 .1.notify_all();
    }
    pub(super) fn wait(&self) -> T {
        let mut g = self.0 .0.lock().expect("slot lock");
        while g.is_none() {
            g = self.0 .1.wait(g).expect("slot lock");
        }
        g.clone().expect("checked")
    }
}

/// A counting semaphore bounding the files in flight.
pub(super) struct Permits {
    pub(super) n: Mutex<usize>,
    pub(super) cv: Condvar,
}

impl Permits {
    pub(super) fn acquire(&self) {
        let mut n = self.n.lock().expect("permits");
        while *n == 0 {
            n = self.cv.wait(n).expect("permits");
        }
        *n -= 1;
    }
    pub(super) fn release(&self) {
        *self.n.lock().expect("permits") += 1;
        self.cv.notify_all();
    }
    /// Waits until every permit is back: no file job is running or queued.
    pub(super) fn wait_all(&self, total: usize) {
        let mut n = self.n.lock().expect("permits");
        while *n < total {
            n = self.cv.wait(n).expect("permits");
        }
    }
}
