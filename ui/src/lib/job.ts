// Follow a server job (/api/jobs/{id}) until it ends: progress for a bar, cancel for a button.
import { get, del } from "./api";

export type Job = { id: number; state: string; progress: number; message: string; result?: any; error?: string };

export function follow(id: number, onUpdate: (job: Job) => void, every = 300): Promise<Job> {
  return new Promise((resolve) => {
    const timer = setInterval(async () => {
      try {
        const job: Job = await get(`/api/jobs/${id}`);
        onUpdate(job);
        if (job.state !== "running") {
          clearInterval(timer);
          resolve(job);
        }
      } catch (e: any) {
        clearInterval(timer);
        resolve({ id, state: "failed", progress: 0, message: "", error: e.message });
      }
    }, every);
  });
}

export const cancel = (id: number) => del(`/api/jobs/${id}`);
