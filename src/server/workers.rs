//! Worker threads, nginx's `worker_processes auto` as threads: each runs a single-threaded tokio
//! runtime with its own listening sockets (SO_REUSEPORT, the kernel spreads connections) and serves
//! its connections start to finish. Nothing on the request path crosses threads, which measured at a
//! third of the CPU per request of tokio's work-stealing runtime on these 2-core machines.

use tokio::runtime::Handle;

/// Running worker threads.
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` worker threads (0: one per available core). They run until the process exits.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = if count == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { count };
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("infergate-worker-{index}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(Workers { handles })
    }

    /// Handles to spawn work onto each worker.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}
