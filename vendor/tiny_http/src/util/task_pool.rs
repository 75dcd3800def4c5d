use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Box<dyn FnMut() + Send>>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    pub fn new() -> TaskPool {
        // modelmux: no thread is started here (upstream started MIN_THREADS idle ones): each
        // costs an idle server memory (stack pages, about 16 KiB of RSS apiece) before any
        // connection came. `spawn` starts a thread whenever none is idle, so the first
        // connections start them, and up to MIN_THREADS of them stay waiting afterwards as
        // before.
        TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
        }
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    pub fn spawn(&self, code: Box<dyn FnMut() + Send>) {
        let mut queue = self.sharing.todo.lock().unwrap();

        // modelmux: upstream queued the task whenever `waiting_tasks > 0`, but a worker that was
        // notified still counts as waiting until it re-takes the lock, so two spawns in that gap
        // queued two tasks for one worker. A task is a whole keep-alive connection: the second
        // one waited until some other connection closed. `waiting_tasks` only changes under this
        // lock, and each waiting worker takes at most one queued task, so a task is queued only
        // while there are more waiting workers than queued tasks; otherwise it gets a new thread.
        if queue.len() >= self.sharing.waiting_tasks.load(Ordering::Acquire) {
            self.add_thread(Some(code));
        } else {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
        }
    }

    fn add_thread(&self, initial_fn: Option<Box<dyn FnMut() + Send>>) {
        let sharing = self.sharing.clone();

        // modelmux: `thread::spawn` panics when a thread cannot be created (thread/pid limit,
        // memory), which killed the accept thread (and the process with `panic = "abort"`).
        // On failure the task is dropped instead (for a new connection: it is closed).
        let spawned = thread::Builder::new().spawn(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            if let Some(mut f) = initial_fn {
                f();
            }

            loop {
                let mut task: Box<dyn FnMut() + Send> = {
                    let mut todo = sharing.todo.lock().unwrap();

                    let task;
                    loop {
                        if let Some(poped_task) = todo.pop_front() {
                            task = poped_task;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing.condvar.wait(todo).unwrap();
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap();
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            return;
                        }
                    }

                    task
                };

                task();
            }
        });
        if let Err(e) = spawned {
            log::warn!("Could not spawn a worker thread, dropping the task: {}", e);
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

// modelmux: every task spawned runs at once, however fast the spawns come (a task is a whole
// keep-alive connection and may never end while others wait).
#[cfg(test)]
mod tests {
    use super::TaskPool;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    #[test]
    fn tasks_spawned_back_to_back_all_run_at_once() {
        const TASKS: usize = 32;
        let pool = TaskPool::new();
        for round in 0..50 {
            let started = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = mpsc::channel();
            for _ in 0..TASKS {
                let started = Arc::clone(&started);
                let tx = tx.clone();
                pool.spawn(Box::new(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    // Each task holds its thread until every task of the round has started.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while started.load(Ordering::SeqCst) < TASKS && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let _ = tx.send(started.load(Ordering::SeqCst));
                }));
            }
            for _ in 0..TASKS {
                let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                assert_eq!(
                    seen, TASKS,
                    "round {}: a task waited for another to end",
                    round
                );
            }
        }
    }
}
